"""The report beyond the comparison table: operating points, calibration, subgroups, EmoBox
predictions, their figures, and ``report.html`` that puts everything on one page.

:func:`write_report` is called by :func:`transfer.report.tables.write_outputs` after every grid
and by ``python -m transfer.report`` (a rebuild from the records).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from transfer.common.cache import atomic_path
from transfer.common.config import ReportConfig
from transfer.evaluate.operating import pooled_scores
from transfer.grid.records import RunRecord
from transfer.report.emobox import write_predictions
from transfer.report.html import Section, read_json, write_html
from transfer.report.sections import (
    calibration_markdown,
    calibration_table,
    operating_markdown,
    operating_table,
    subgroups,
    subgroups_markdown,
)

#: Figures shown in their own sections, not again under "Figures".
SECTION_FIGURES = ("reliability.png", "roc_pr.png", "subgroups.png")


def _csv(path: Path, table: pd.DataFrame) -> None:
    """Write a table, or remove an earlier build's file when there is nothing to write."""
    if table.empty:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def emobox_markdown(scores: pd.DataFrame, order: list[str]) -> str:
    """The EmoBox section: mean ± std over runs of its metrics, and where the files are."""
    if scores.empty:
        return "No predictions: no finished runs."
    rows = []
    for label in order:
        part = scores[scores["strategy"] == label]
        if part.empty:
            continue
        cells = [f"{part[m].mean():.3f} ± {part[m].std(ddof=0):.2f}"
                 for m in ("WA", "UA", "macro-F1")]
        rows.append(f"| {label} | {len(part)} | " + " | ".join(cells) + " |")
    return "\n".join([
        "| strategy | runs | WA | UA | macro-F1 |", "|---|---|---|---|---|", *rows, "",
        "EmoBox's metric names (mean ± std over runs, per run over its test decision units): "
        "WA = accuracy, UA = unweighted accuracy (balanced accuracy, the table's UAR), "
        "macro-F1. Per run, `predictions/<strategy>-fold<f>-seed<s>.jsonl` holds EmoBox's "
        "`{\"key\", \"pred\"}` lines (pred: index into `predictions/label_map.json`), "
        "`predictions/targets-fold<f>-seed<s>.jsonl` the `{\"key\", \"label\"}` lines, and "
        "`predictions/scores.csv` these metrics per run. `python -m transfer.inspect folds "
        "--corpus NAME` writes EmoBox-style leave-one-speaker-out fold files with the same "
        "keys."])


def _figures(out_dir: Path, records: list[RunRecord], order: list[str], bins: dict,
             sub: pd.DataFrame, table: pd.DataFrame, report: ReportConfig) -> dict[str, Path]:
    from transfer.report.plots import reliability_figure, roc_pr_figure, subgroup_figure

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    unit, positive = table.attrs.get("unit", "subject"), table.attrs.get("positive", "")
    curves = {label: pooled_scores([r for r in records if r.strategy == label])
              for label in order}
    made = {"reliability": reliability_figure(fig_dir, bins, report.temperature),
            "roc_pr": roc_pr_figure(fig_dir, curves, positive, unit) if positive else None,
            "subgroups": subgroup_figure(fig_dir, sub, unit)}
    for name, path in made.items():  # an earlier build's figure that this one lacks
        if path is None:
            (fig_dir / f"{name}.png").unlink(missing_ok=True)
    return {k: v for k, v in made.items() if v is not None}


def _other_figures(out_dir: Path, order: list[str]) -> list[Path]:
    """The per-strategy figures, kind by kind (curves, confusion, features) in table order,
    then any other figure in the folder."""
    from transfer.report.plots import _safe

    folder = out_dir / "figures"
    ordered = [folder / f"{kind}_{_safe(label)}.png" for kind in ("curves", "confusion",
                                                                   "features")
               for label in order]
    ordered = [p for p in ordered if p.is_file()]
    rest = sorted(p for p in folder.glob("*.png")
                  if p not in ordered and p.name not in SECTION_FIGURES)
    return ordered + rest


def _summary(table: pd.DataFrame) -> str:
    a = table.attrs
    runs, failed = int(table["runs"].sum()), int(table["failed"].sum())
    positive = f"positive class {a['positive']}; " if a.get("positive") else ""
    return (f"{len(table)} strategies, {runs} finished runs ({failed} failed) under protocol "
            f"{a.get('protocol', '')}; decision unit: the {a.get('unit', 'subject')}; "
            f"{positive}reference row: {a.get('reference') or '-'}.")


def write_report(out_dir: Path, records: list[RunRecord], order: list[str], table: pd.DataFrame,
                 report: ReportConfig, title: str, *, plots: bool = True,
                 table_md: str = "", leak_md: str = "") -> Path:
    """Write the sections' CSVs (``operating_points.csv``, ``calibration.csv``,
    ``subgroups.csv``), the EmoBox predictions, the section figures and ``report.html``.

    Args:
        records: the latest record of every run of the reported protocol.
        order: the strategies in table order.
        table: the comparison table (:func:`transfer.report.tables.build_table`).
        table_md, leak_md: the texts of ``table.md`` and ``leak.md`` ('' = none).
    """
    out_dir = Path(out_dir)
    order = order or list(table["strategy"])
    unit, positive = table.attrs.get("unit", "subject"), table.attrs.get("positive", "")
    ops = operating_table(records, order, report)
    cal, bins = calibration_table(records, order)
    sub, how = subgroups(records, order, report)
    for name, t in (("operating_points", ops), ("calibration", cal), ("subgroups", sub)):
        _csv(out_dir / f"{name}.csv", t)
    scores = write_predictions(out_dir, records)
    figs = _figures(out_dir, records, order, bins, sub, table, report) if plots else {}
    sweeps = sorted(out_dir.glob("sweep*.md"))
    sections = [
        Section("comparison", "Comparison", table_md),
        Section("operating-points", "Operating points", operating_markdown(ops, unit, report),
                [figs["roc_pr"]] if "roc_pr" in figs else []),
        Section("calibration", "Calibration", calibration_markdown(cal, unit, report),
                [figs["reliability"]] if "reliability" in figs else []),
        Section("subgroups", "Subgroups", subgroups_markdown(sub, how, records, unit, positive),
                [figs["subgroups"]] if "subgroups" in figs else []),
        Section("leak-report", "Leak report", leak_md or (
            "No leak report: only one protocol ran (`protocol.compare = [\"segment-random\"]` "
            "or `--leak-report` adds the research code's speaker-leaky split).")),
        *([Section("sweeps", "Sweeps", "\n\n".join(p.read_text(encoding="utf-8")
                                                   for p in sweeps))] if sweeps else []),
        Section("emobox", "EmoBox-compatible predictions", emobox_markdown(scores, order)),
        Section("figures", "Figures", "Learning curves (with the alignment losses), confusion "
                "matrices of the test segments and PCA projections of source vs target "
                "`general` features, per strategy." if plots else "Figures were not drawn "
                "(--no-plots).", _other_figures(out_dir, order) if plots else []),
        Section("recipe", "Recipe", "The resolved recipe (`recipe.json`).",
                pre=read_json(out_dir / "recipe.json") or "(no recipe.json)"),
        Section("environment", "Environment", "Versions, device and commit "
                "(`environment.json`).",
                pre=read_json(out_dir / "environment.json") or "(no environment.json)"),
    ]
    return write_html(out_dir, title, _summary(table), sections)
