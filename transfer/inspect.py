"""List what is available, with options and defaults, to write a recipe without reading code.

``python -m transfer.inspect [corpora|features|training|backbones|strategies|report]``
(default: all)

``python -m transfer.inspect folds --corpus NAME [--root DIR] [--out DIR]`` writes EmoBox-style
leave-one-speaker-out fold files of a corpus (:mod:`transfer.report.emobox`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect as pyinspect
import re
import types
import typing
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from transfer.common.console import main_guard
from transfer.common.options import Bounds, field_info, is_per_run


def option_docs(cls: type) -> dict[str, str]:
    """Per-option text from an ``Args:`` section (``name: text`` or ``a, b: text``)."""
    doc = pyinspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in doc.split("Args:", 1)[-1].splitlines() if "Args:" in doc else []:
        m = re.match(r"^\s{0,8}([a-z_][\w, ]*):\s*(.*)$", line)
        if m and all(re.fullmatch(r"[a-z_]\w*", n.strip()) for n in m.group(1).split(",")):
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                docs[n] = m.group(2).strip()
        elif current and line.strip():
            for n in current:
                docs[n] += " " + line.strip()
    return docs


def options_table(title: str, cls: type) -> Table:
    """An options dataclass as a table: each option's type, default, valid range, the search
    space a sweep draws it from (and whether draws that differ in it share a pack), meaning."""
    table = Table(title=title, title_justify="left", show_header=True, expand=False)
    for col in ("option", "type", "default", "valid", "sweep", "meaning"):
        table.add_column(col, overflow="fold")
    hints = typing.get_type_hints(cls)
    docs = option_docs(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        type_name = _type_name(hints[f.name])
        info = field_info(f)
        valid = info.bounds.describe() if info.bounds != Bounds() else ""
        swept = ""
        if info.search is not None:
            swept = info.search.describe() + ("" if is_per_run(cls, f.name)
                                              else " (packed apart)")
        table.add_row(f.name, escape(type_name), escape(repr(default)), escape(valid),
                      escape(swept), escape(docs.get(f.name, "").replace("``", "")))
    if not dataclasses.fields(cls):
        table.add_row("(none)", "", "", "", "", "")
    return table


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def show_training(console: Console) -> None:
    """The shared training settings (``[train]``), with what a sweep tunes by default."""
    from transfer.common.config import SweepConfig, TrainConfig

    console.print("\n[bold]train[/]  training settings of every strategy; a sweep tunes the "
                  "ones with a space (" + escape("[sweep.train]") + " narrows or turns them off)")
    console.print(options_table(escape("[train]"), TrainConfig))
    console.print(options_table(escape("[sweep]"), SweepConfig))


def show_features(console: Console) -> None:
    """The shared ``[features]`` keys, then every registered feature kind with its options."""
    from transfer.common.config import FeatureSpec
    from transfer.data import kinds

    console.print("\n[bold]features[/]  frame features of every corpus (mfcc, logmel, or ssl: "
                  "WavLM / HuBERT / wav2vec 2.0 states from a local checkpoint, "
                  + escape('pip install -e ".[ssl]"') + "); kinds register in "
                  "transfer/data/kinds.py")
    console.print(options_table(escape("[features]"), FeatureSpec))
    for name in kinds.names():
        kind = kinds.get_kind(name)
        console.print(options_table(escape(f"[features] kind = {name!r}"), kind.Options))


def show_report(console: Console) -> None:
    """The report's settings (``[report]``) and the logging ones (``[log]``)."""
    from transfer.common.config import LogConfig, ReportConfig

    console.print("\n[bold]report[/]  what report.html adds to the table (operating points, "
                  "calibration, subgroups); none of it changes a run, so "
                  "python -m transfer.report DIR --set report.KEY=VALUE rebuilds with others")
    console.print(options_table(escape("[report]"), ReportConfig))
    console.print(options_table(escape("[log]"), LogConfig))
# what a strategy needs of the target's labels ([target] labelled = true / false)
_LABEL_MODES = {"required": "", "optional": "  (also with an unlabelled target)",
                "none": "  (unlabelled target only)"}


def show_strategies(console: Console) -> None:
    """Every registered strategy: its module's summary, whether it needs a source and what it
    needs of the target's labels, and its options."""
    from transfer.train.strategies import get_strategy, names

    for name in names():
        cls = get_strategy(name)
        summary = (pyinspect.getdoc(pyinspect.getmodule(cls)) or "").split("\n\n")[0]
        summary = escape(summary.replace("``", ""))
        console.print(f"\n[bold]{name}[/]  {summary}"
                      + (escape("  (needs a [source])") if cls.needs_source else "")
                      + _LABEL_MODES[cls.target_labels])
        console.print(options_table(escape(f"[[strategies]] name = \"{name}\""), cls.Options))


def show_backbones(console: Console) -> None:
    """Every registered backbone: its module's summary, whether it packs runs, its options."""
    import backbones

    for name in backbones.names():
        opts = backbones.options_of(name)
        summary = (pyinspect.getdoc(pyinspect.getmodule(opts)) or "").split("\n\n")[0]
        runs = ("packs runs" if backbones.packable(name) else "one run at a time")
        console.print(f"\n[bold]{name}[/]  {escape(' '.join(summary.replace('``', '').split()))}"
                      f"  ({runs})")
        console.print(options_table(escape(f"[backbone] name = \"{name}\", options = {{...}}"),
                                    opts))


def show_corpora(console: Console) -> None:
    """The corpus cards shipped in datasets/: task, sample rate, labels, root variable,
    segment settings, description."""
    from transfer.data.cards import available_cards, load_card

    table = Table(title=escape("corpus cards (datasets/*.toml); [source]/[target] corpus = NAME"),
                  title_justify="left")
    for col in ("name", "task", "rate", "labels (after map/keep)", "root", "segments",
                "description"):
        table.add_column(col, overflow="fold")
    for name in available_cards():
        card = load_card(name)
        seg = card.segments.resolve(sample_rate=card.sample_rate)  # what a recipe starts from
        table.add_row(name, card.task, str(card.sample_rate), ", ".join(card.final_labels()),
                      f"${card.env_var}", f"{seg.seconds:g} s {seg.mode}",
                      card.description)
    console.print(table)
    console.print("Your own corpus: write a card (see datasets/README.md) and use its path as "
                  "corpus = \"path/to/card.toml\".")


def write_fold_files(corpus: str | None, root: str | None, out: str) -> int:
    """``folds``: EmoBox-style leave-one-speaker-out fold files of one corpus."""
    from transfer import UserError
    from transfer.report.emobox import write_folds

    if not corpus:
        raise UserError("folds needs --corpus NAME (a card name or path)")
    written = write_folds(corpus, root, out)
    folds = sum(1 for p in written if p.name.endswith(".jsonl")) // 2
    print(f"wrote {folds} leave-one-speaker-out folds (EmoBox format) to "
          f"{written[0].parent}")
    return 0


@main_guard
def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.inspect`` (see the module docstring); ``argv`` defaults to the
    command line. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m transfer.inspect",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?",
                        choices=["corpora", "features", "training", "backbones", "strategies",
                                 "report", "all", "folds"],
                        default="all")
    parser.add_argument("--corpus", help="folds: the corpus card (name or path)")
    parser.add_argument("--root", help="folds: the corpus folder (default: $<NAME>_ROOT)")
    parser.add_argument("--out", default="folds", help="folds: where to write (default: folds)")
    args = parser.parse_args(argv)
    if args.what == "folds":
        return write_fold_files(args.corpus, args.root, args.out)
    console = Console(width=140)
    shows = {"corpora": show_corpora, "features": show_features, "training": show_training,
             "backbones": show_backbones, "strategies": show_strategies, "report": show_report}
    for key, show in shows.items():
        if args.what in (key, "all"):
            show(console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
