"""Fuzzing (issue 28): recipe values and corpus-card values drawn by hypothesis; every
``python -m transfer.run RECIPE --dry-run`` either succeeds or exits with one line (status 2),
never with a traceback.

The values mix what a hand-written probe tries (0, -1, NaN, inf, 1e-9, 2**32, huge numbers,
empty and markup-like strings, paths, wrong types, lists, tables, unknown keys) over every key
a recipe or a card has. The examples are derandomized, so the suite always runs the same
ones; ``SER_TRANSFER_FUZZ=N`` runs N random examples instead (hypothesis keeps any failure it
finds in ``.hypothesis/`` and replays it first next time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_RECIPE, tiny_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transfer import REPO_ROOT
from transfer.grid.recipe import parse_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Examples per property in the suite: together about 10 s on a 2-core machine.
EXAMPLES = int(os.environ.get("SER_TRANSFER_FUZZ", "0")) or 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="SER_TRANSFER_FUZZ" not in
                os.environ, suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.function_scoped_fixture],
                database=None if "SER_TRANSFER_FUZZ" not in os.environ else
                settings.default.database)

TEXTS = ["", " ", "x", "[bold]", "[/x]", "[target]", "../../x", "/abs/path", "a\nb", "é中",
         "nan", "pad", "window", "concat", "center", "mfcc", "logmel", "ssl", "all", "none",
         "modma", "casia", "subject", "recording", "segment", "MDD", "HC", "table", "lines",
         "path", "*/*.wav", "(?P<speaker>", "^(?P<speaker>[^/]+)/(?P<label>[^/]+)\\.wav$",
         "{speaker}", "{", "adam", "sgd", "cosine", "val_loss", "mha", "bn", "diff", "add"]
NUMBERS = [0, 1, -1, 2, 3, 7, 39, 100000, 2**31, 2**32, -(2**40), 2**62, 0.0, -0.0, 1e-9,
           1e-6, 0.5, 0.999, 1.0, 2.5, 7.5, 36000.0, 1e30, -1e30, math.nan, math.inf, -math.inf]


SCALARS = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(TEXTS), st.booleans(),
                    st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(TEXTS[:8] + ["a", "b"]), SCALARS,
                                   max_size=2))


def toml(value: Any) -> str:
    """``value`` as a TOML value (what ``--set key=value`` and a card file hold)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(
            value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"


def _flat(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        keys += _flat(v, key + ".") if isinstance(v, dict) and v else [key]
    return keys


STRATEGIES = ["scratch", "freeze", "ddg"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    return tiny_recipe(tmp_path_factory.mktemp("fuzz") / "r.toml", STRATEGIES)


def recipe_keys() -> list[str]:
    """Every key of the fuzzed recipe (sections, options of its strategies and backbone), and
    a few that do not exist."""
    import backbones

    text = TINY_RECIPE.format(name="tiny", strategies="".join(
        f'[[strategies]]\nname = "{s}"\n' for s in STRATEGIES))
    recipe = parse_recipe(tomllib.loads(text))
    data = recipe.to_dict()
    strategies = data.pop("strategies")
    keys = _flat(data)
    keys += [f"strategies.{s['label']}.{k}" for s in strategies for k in s if k != "label"]
    keys += [f"backbone.options.{f.name}"
             for f in dataclasses.fields(backbones.options_of(recipe.backbone.name))]
    return keys + ["nonsense", "train.nonsense", "strategies.ddg.nonsense", "source.segments",
                   "target", "features", "seeds.0", "strategies.nope.mu"]


def dry_run(args: list[str]) -> tuple[int, str, str]:
    """``python -m transfer.run ARGS --dry-run`` in this process: (status, stdout, stderr)."""
    from transfer.run import main

    out, err = io.StringIO(), io.StringIO()
    old = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--dry-run"])
    finally:
        signal.signal(signal.SIGTERM, old)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str) -> None:
    """Success, or one line naming what is wrong (the console shows no traceback)."""
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err


@FUZZ
@given(sets=st.lists(st.tuples(st.sampled_from(recipe_keys()), VALUES), min_size=1,
                     max_size=3))
def test_fuzzed_recipe_values_dry_run_cleanly(recipe_file, sets):
    args = [str(recipe_file)]
    for key, value in sets:
        args += ["--set", f"{key}={toml(value)}"]
    assert_clean(*dry_run(args)[::2])


CARD = {
    "name": "modma", "description": "fuzzed", "task": "depression", "sample_rate": 44100,
    "audio": {"glob": "*/*.wav", "pattern": "^(?P<speaker>\\d{8})/(?P<n>\\d+)\\.wav$"},
    "labels": {"source": "table", "files": ["subjects.xlsx"], "key_column": "subject id",
               "label_column": "type", "zero_pad": 8, "names": ["MDD", "HC"],
               "positive": "MDD", "unit": "subject"},
    "segments": {"seconds": 10.0, "mode": "window"},
}
CARD_KEYS = ["name", "description", "task", "sample_rate", "root_env", "nonsense",
             "audio.glob", "audio.pattern", "audio.speaker_format", "audio.require",
             "audio.transcript", "audio.transcript_keep", "audio.nonsense",
             "labels.source", "labels.names", "labels.codes", "labels.map", "labels.keep",
             "labels.positive", "labels.unit", "labels.files", "labels.key_column",
             "labels.label_column", "labels.key_group", "labels.zero_pad", "labels.line_glob",
             "labels.line_pattern", "labels.nonsense", "segments.seconds", "segments.mode",
             "segments.nonsense", "audio", "labels", "segments"]


def card_text(card: dict) -> str:
    top = [f"{json.dumps(k)} = {toml(v)}" for k, v in card.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "".join(f"{json.dumps(kk)} = {toml(vv)}\n" for kk, vv in v.items())
              for k, v in card.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables)


@FUZZ
@given(data=st.data())
def test_fuzzed_card_values_dry_run_cleanly(recipe_file, data):
    card = json.loads(json.dumps(CARD))
    for key in data.draw(st.lists(st.sampled_from(CARD_KEYS), min_size=1, max_size=3)):
        *section, name = key.split(".")
        node = card[section[0]] if section and isinstance(card.get(section[0]), dict) else card
        if data.draw(st.booleans(), label="remove") and name in node:
            del node[name]
        else:
            node[name] = data.draw(VALUES, label=key)
    path = recipe_file.parent / "card.toml"
    path.write_text(card_text(card), encoding="utf-8")
    args = [str(recipe_file), "--set", f"target.corpus={json.dumps(str(path))}"]
    assert_clean(*dry_run(args)[::2])


def test_the_fuzzed_files_are_valid_before_fuzzing(recipe_file, tmp_path):
    """The base recipe and card pass --dry-run, so a failing example is the value's fault."""
    path = tmp_path / "card.toml"
    path.write_text(card_text(CARD))
    assert (REPO_ROOT / "datasets" / "modma.toml").is_file()
    code, out, err = dry_run([str(recipe_file), "--set", f"target.corpus={json.dumps(str(path))}"])
    assert code == 0 and "planned runs" in out, err
