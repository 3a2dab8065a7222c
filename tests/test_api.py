"""The README's Python API example runs as written: arrays -> domain -> one run -> metrics,
no CLI and no file written."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from transfer import UserError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SER_TRANSFER_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102
    record = namespace["record"]
    assert record.ok, record.error
    assert set(record.metrics) >= {"unit_uar", "segment_uar", "unit_f1"}
    assert 0.0 <= record.metrics["unit_uar"] <= 1.0
    assert record.sizes["test"] > 0 and record.epochs_run == 3
    assert out.getvalue().startswith("ok {")
    assert os.listdir(tmp_path) == []  # no file written, not even a cache


def test_domain_from_arrays_checks_its_input():
    from transfer import Domain

    x = np.zeros((6, 3, 5), np.float32)
    spk = np.array(["a", "a", "b", "b", "c", "c"])
    d = Domain.from_arrays(x, np.array(["hc", "hc", "mdd", "mdd", "hc", "hc"]), spk,
                           labels=["hc", "mdd"], positive="mdd")
    assert d.y.tolist() == [0, 0, 1, 1, 0, 0] and d.positive_index == 1 and d.labels == ["hc", "mdd"]
    assert d.keys == Domain.from_arrays(x, d.y, spk, labels=["hc", "mdd"]).keys  # content-keyed
    with pytest.raises(UserError, match="segments, features, frames"):
        Domain.from_arrays(x[0], d.y, spk)
    with pytest.raises(UserError, match="one entry per segment"):
        Domain.from_arrays(x, d.y[:4], spk)
    with pytest.raises(UserError, match="labels vary within 1 of 3 subjects"):
        Domain.from_arrays(x, np.array([0, 1, 1, 1, 0, 0]), spk)
    with pytest.raises(UserError, match="positive"):
        Domain.from_arrays(x, d.y, spk, labels=["hc", "mdd"], positive="MDD")


def test_library_messages_are_logged_and_can_be_silenced(capsys):
    import logging

    from transfer.common import console  # noqa: F401 - attaches the console handler

    log = logging.getLogger("transfer.train.pretrain")
    log.info("pretraining note [not markup]")
    assert "pretraining note [not markup]" in capsys.readouterr().err
    top = logging.getLogger("transfer")
    before = top.level
    top.setLevel(logging.WARNING)
    try:
        log.info("hidden note")
        log.warning("shown warning")
        err = capsys.readouterr().err
        assert "hidden note" not in err and "shown warning" in err
    finally:
        top.setLevel(before)
