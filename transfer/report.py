"""The comparison table and figures, built from the run records (``runs.jsonl``) alone.

``python -m transfer.report RESULTS_DIR`` rebuilds them for a finished or partial run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from transfer.cache import atomic_path, atomic_write_text
from transfer.cli import console, main_guard
from transfer.metrics import METRICS
from transfer.records import read_records  # noqa: F401 - the records reader lives there

GAP = ["gap_mmd", "gap_a_distance"]


def latest(records: list[dict]) -> list[dict]:
    """One record per run key: a later success replaces an earlier failure."""
    by_key: dict[str, dict] = {}
    for r in records:
        if r.get("status") == "ok" or r["key"] not in by_key:
            by_key[r["key"]] = r
    return list(by_key.values())


def build_table(records: list[dict], order: list[str] | None = None,
                source: dict | None = None) -> pd.DataFrame:
    """One row per strategy: mean and std over folds x seeds of every metric."""
    records = latest(records)
    labels = order or list(dict.fromkeys(r["strategy"] for r in records))
    rows = []
    for label in labels:
        mine = [r for r in records if r["strategy"] == label]
        ok = [r for r in mine if r["status"] == "ok"]
        row: dict[str, Any] = {
            "strategy": label,
            "protocol": mine[0]["protocol"] if mine else "",
            "speaker_dependent": bool(mine and mine[0]["speaker_dependent"]),
            "runs": len(ok), "failed": len(mine) - len(ok),
        }
        for level in ("subject", "segment"):
            for m in METRICS:
                vals = np.array([r["metrics"][f"{level}_{m}"] for r in ok], dtype=float)
                row[f"{level}_{m}_mean"] = _nan(np.nanmean, vals)
                row[f"{level}_{m}_std"] = _nan(lambda v: np.nanstd(v, ddof=0), vals)
        for g in GAP:
            vals = np.array([r.get("gap", {}).get(g, math.nan) for r in ok], dtype=float)
            row[f"{g}_mean"] = _nan(np.nanmean, vals)
        uses_source = bool(mine and mine[0].get("uses_source"))
        for k in ("source_acc", "source_uar"):
            row[k] = (source or {}).get(k, math.nan) if uses_source else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _nan(fn, vals: np.ndarray) -> float:
    if vals.size == 0 or np.all(np.isnan(vals)):
        return math.nan
    return float(fn(vals))


def _pm(mean: float, std: float) -> str:
    return "-" if math.isnan(mean) else f"{mean:.3f}±{std:.2f}"


def _f(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


DISPLAY = [("subject UAR", "subject_uar"), ("subject acc", "subject_acc"),
           ("subject F1", "subject_f1"), ("subject sens", "subject_sens"),
           ("subject spec", "subject_spec"), ("subject AUC", "subject_auc"),
           ("segment UAR", "segment_uar")]


def _cells(row: pd.Series) -> list[str]:
    name = row["strategy"] + (" [speaker-dependent]" if row["speaker_dependent"] else "")
    cells = [name, f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")]
    cells += [_pm(row[f"{k}_mean"], row[f"{k}_std"]) for _, k in DISPLAY]
    cells += [_f(row["gap_mmd_mean"]), _f(row["gap_a_distance_mean"])]
    return cells


HEADERS = (["strategy", "runs"] + [h for h, _ in DISPLAY]
           + ["gap MMD", "gap A-dist"])


def markdown(table: pd.DataFrame, title: str = "") -> str:
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for _, row in table.iterrows()]
    if table["speaker_dependent"].any():
        lines += ["", "Rows marked [speaker-dependent] come from a random split of segments: the "
                  "same subjects are in train and test, so they measure speaker recognition as "
                  "much as depression."]
    if not table.empty and not math.isnan(table["source_acc"].max()):
        src = table.dropna(subset=["source_acc"]).iloc[0]
        lines += ["", f"Source pretraining (held-out speakers): accuracy {src['source_acc']:.3f}, "
                  f"UAR {src['source_uar']:.3f}."]
    lines += ["", "Mean ± std over folds x seeds. Subject level: a subject's decision is the mean "
              "probability of its segments. gap: domain gap of `general` features between "
              "held-out source and target test data (MMD; proxy A-distance, 0 = "
              "indistinguishable, 2 = separable)."]
    return "\n".join(lines) + "\n"


def print_table(table: pd.DataFrame, title: str = "") -> None:
    t = Table(title=title, show_lines=False)
    for h in HEADERS:
        t.add_column(h, justify="left" if h == "strategy" else "right", no_wrap=True)
    for _, row in table.iterrows():
        t.add_row(*(escape(c) for c in _cells(row)),
                  style="yellow" if row["speaker_dependent"] else None)
    from rich.console import Console

    Console(width=max(220, console.width), stderr=False).print(t)
    if table["speaker_dependent"].any():
        console.print("[yellow]speaker-dependent rows: random segment split, subjects leak "
                      "between train and test[/]")


def write_outputs(out_dir: Path, records: list[dict], order: list[str], source: dict | None,
                  title: str, plots: bool = True) -> pd.DataFrame:
    table = build_table(records, order, source)
    with atomic_path(out_dir / "table.csv") as tmp:  # no table.csv.tmp left on a full disk
        table.to_csv(tmp, index=False)
    atomic_write_text(out_dir / "table.md", markdown(table, title))
    if plots:
        from transfer.plots import write_plots

        write_plots(out_dir, latest(records), order)
    return table


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.report",
                                     description="Rebuild the table and figures of a results dir.")
    parser.add_argument("results_dir")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.results_dir)
    records = read_records(out / "runs.jsonl")
    if not records:
        from transfer import UserError

        raise UserError(f"no run records in {out / 'runs.jsonl'}")
    meta = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    table = write_outputs(out, records, meta.get("order", []), meta.get("source"),
                          meta.get("title", out.name), plots=not args.no_plots)
    print_table(table, meta.get("title", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
