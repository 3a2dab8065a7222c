"""The comparison table, the leak report and figures, built from the run records alone.

``python -m transfer.report RESULTS_DIR`` rebuilds them (``table.md``/``table.csv`` with the
confidence intervals, the tests against ``scratch`` and sensitivity/specificity at the
validation thresholds, ``leak.md``/``leak.csv`` where the records hold several protocols,
``figures/``, and through :mod:`transfer.report.build` the report's sections and
``report.html``) for a finished or partial run.

Why one file (above ~400 lines): the leak report is :func:`build_table` under a second
protocol and shares its cells and formatting helpers, and :func:`write_outputs` (with the
command line around it) writes both; split apart, the two halves would import each other.
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

from transfer import UserError
from transfer.common.cache import atomic_path, atomic_write_text
from transfer.common.config import ReportConfig
from transfer.common.console import console, main_guard
from transfer.evaluate.metrics import METRICS
from transfer.evaluate.operating import operating_point, positive_index
from transfer.evaluate.stats import N_BOOTSTRAP, paired_test, paired_uar_diff_ci, pooled_uar_ci
from transfer.grid.folder import read_summary
from transfer.grid.records import RunRecord, planned, read_records
from transfer.report.sections import RULE_TEXT
from transfer.report.sweep import is_sweep, write_sweep


def latest(records: list[RunRecord]) -> list[RunRecord]:
    """One record per run key: a later success replaces an earlier failure."""
    by_key: dict[str, RunRecord] = {}
    for r in records:
        if r.ok or r.key not in by_key:
            by_key[r.key] = r
    return list(by_key.values())


def primary_protocol(records: list[RunRecord], protocol: str | None = None) -> str:
    """The protocol the table reports: the one given, else the first speaker-independent one."""
    if protocol:
        return protocol
    names = list(dict.fromkeys(r.protocol for r in records))
    honest = [n for n in names
              if not any(r.speaker_dependent for r in records if r.protocol == n)]
    return (honest or names or [""])[0]


def unit_of(records: list[RunRecord]) -> str:
    """The decision unit of the records (records written before units existed: subject)."""
    return next((r.unit for r in records if r.unit), "subject")


def reference_label(records: list[RunRecord], order: list[str]) -> str | None:
    """The row every other strategy is tested against: the first ``scratch`` entry, else (an
    unlabelled target) the first ``source_only`` entry, the unadapted source model."""
    kinds = {r.strategy: (r.strategy_name or r.strategy, r.adapt)
             for r in records}  # a test-time adapted row is no reference
    for reference in ("scratch", "source_only"):
        label = next((label for label in order if kinds.get(label) == (reference, "none")), None)
        if label is not None:
            return label
    return None


def positive_name(records: list[RunRecord]) -> str:
    """The positive class named by the records ('' where the task has none)."""
    for r in records:
        pos = positive_index(r)
        if pos >= 0:
            return r.labels[pos]
    return ""


def build_table(records: list[RunRecord], order: list[str] | None = None,
                source: dict | None = None, protocol: str | None = None,
                report: ReportConfig | None = None) -> pd.DataFrame:
    """One row per strategy under one protocol (default: :func:`primary_protocol`): mean and
    std over folds x seeds of every metric, the pooled decision-unit UAR with its bootstrap CI,
    the paired test against ``scratch``, and the pooled sensitivity and specificity at the
    runs' validation thresholds (``report``: how they are chosen)."""
    records = latest(records)
    protocol = primary_protocol(records, protocol)
    records = [r for r in records if r.protocol == protocol]
    labels = order or list(dict.fromkeys(r.strategy for r in records))
    unit = unit_of(records)
    ref = reference_label(records, labels)
    report = report or ReportConfig()
    ref_ok = [r for r in records if r.strategy == ref and r.ok]
    rows = [_row(label, records, protocol, unit, ref_ok if ref not in (None, label) else None,
                 report, source) for label in labels]
    table = pd.DataFrame(rows)
    table.attrs.update(unit=unit, reference=ref, protocol=protocol,
                       positive=positive_name(records), threshold=report.threshold,
                       specificity=report.specificity)
    return table


def _row(label: str, records: list[RunRecord], protocol: str, unit: str,
         ref_ok: list[RunRecord] | None, report: ReportConfig, source: dict | None
         ) -> dict[str, Any]:
    """The table row of one strategy (``ref_ok``: the reference's runs, None for the
    reference itself)."""
    mine = [r for r in records if r.strategy == label]
    ok = [r for r in mine if r.ok]
    return {"strategy": label,
            "protocol": mine[0].protocol if mine else protocol,
            "speaker_dependent": bool(mine and mine[0].speaker_dependent),
            "unit": unit, "runs": len(ok), "failed": len(mine) - len(ok),
            **_metric_cells(ok), **_pooled_cells(ok), **_reference_cells(ok, ref_ok),
            **_threshold_cells(ok, report), **_gap_cells(ok), **_source_cells(mine, source)}


def _metric_cells(ok: list[RunRecord]) -> dict[str, float]:
    """Mean and std over runs of every metric at both levels."""
    row = {}
    for level in ("unit", "segment"):
        for m in METRICS:
            vals = np.array([r.metric(f"{level}_{m}") for r in ok], dtype=float)
            row[f"{level}_{m}_mean"] = _nan(np.nanmean, vals)
            row[f"{level}_{m}_std"] = _nan(lambda v: np.nanstd(v, ddof=0), vals)
    return row


def _pooled_cells(ok: list[RunRecord]) -> dict[str, float]:
    ci = pooled_uar_ci(ok)
    return {"unit_uar_pooled": ci.point, "unit_uar_ci_low": ci.low, "unit_uar_ci_high": ci.high,
            "units_tested": ci.units}


def _reference_cells(ok: list[RunRecord], ref_ok: list[RunRecord] | None
                     ) -> dict[str, float]:
    """The comparison with the reference row (None: this is the reference, or there is none):
    the pooled difference with its paired interval and the paired test over runs."""
    if ref_ok is None:
        return {"vs_scratch_diff": math.nan, "vs_scratch_p": math.nan, "vs_scratch_pairs": 0,
                "vs_scratch_min_p": math.nan, "vs_scratch_pooled_diff": math.nan,
                "vs_scratch_diff_ci_low": math.nan, "vs_scratch_diff_ci_high": math.nan}
    ref_uar = {(r.fold, r.seed): r.metric("unit_uar") for r in ref_ok}
    delta = paired_uar_diff_ci(ok, ref_ok)
    pairs = [(r.metric("unit_uar"), ref_uar[(r.fold, r.seed)]) for r in ok
             if (r.fold, r.seed) in ref_uar]
    test = paired_test(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
    return {"vs_scratch_diff": test.mean_diff, "vs_scratch_p": test.p,
            "vs_scratch_pairs": test.pairs, "vs_scratch_min_p": test.min_p,
            "vs_scratch_pooled_diff": delta.point, "vs_scratch_diff_ci_low": delta.low,
            "vs_scratch_diff_ci_high": delta.high}


def _threshold_cells(ok: list[RunRecord], report: ReportConfig) -> dict[str, float]:
    """Pooled sensitivity and specificity at the runs' validation thresholds."""
    point = operating_point(ok, report.threshold, report.specificity)
    row: dict[str, float] = {"threshold_mean": point.threshold_mean if point else math.nan}
    for key in ("sens", "spec"):
        ci = getattr(point, key) if point else None
        row.update({f"unit_{key}_thr": ci.point if ci else math.nan,
                    f"unit_{key}_thr_low": ci.low if ci else math.nan,
                    f"unit_{key}_thr_high": ci.high if ci else math.nan})
    return row


def _gap_cells(ok: list[RunRecord]) -> dict[str, float]:
    """Mean over runs of the domain gap (NaN where no run measured it)."""
    gaps = [r.gap for r in ok]
    cells = {"gap_mmd": [g.mmd if g else math.nan for g in gaps],
             "gap_a_distance": [g.a_distance if g else math.nan for g in gaps]}
    return {f"{name}_mean": _nan(np.nanmean, np.array(vals, dtype=float))
            for name, vals in cells.items()}


def _source_cells(mine: list[RunRecord], source: dict | None) -> dict[str, float]:
    uses_source = bool(mine and mine[0].uses_source)
    return {k: (source or {}).get(k, math.nan) if uses_source else math.nan
            for k in ("source_acc", "source_uar")}


def _nan(fn, vals: np.ndarray) -> float:
    if vals.size == 0 or np.all(np.isnan(vals)):
        return math.nan
    return float(fn(vals))


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _pm(mean: float, std: float) -> str:
    return "-" if math.isnan(mean) else f"{mean:.3f}±{std:.2f}"


def _f(v: float) -> str:
    return "-" if _isnan(v) else f"{v:.3f}"


def _ci(row: pd.Series) -> str:
    if _isnan(row["unit_uar_pooled"]):
        return "-"
    if _isnan(row["unit_uar_ci_low"]):
        return f"{row['unit_uar_pooled']:.3f}"
    return (f"{row['unit_uar_pooled']:.3f} [{row['unit_uar_ci_low']:.2f}, "
            f"{row['unit_uar_ci_high']:.2f}]")


def _p(row: pd.Series, reference: str | None) -> tuple[str, str]:
    """(difference, p) cells of the comparison with the reference row."""
    if reference is None:
        return "-", "-"
    if row["strategy"] == reference:
        return "ref", "ref"
    if not row["vs_scratch_pairs"]:
        return "-", "-"
    diff = f"{row['vs_scratch_pooled_diff']:+.3f}"
    if not _isnan(row["vs_scratch_diff_ci_low"]):
        diff += f" [{row['vs_scratch_diff_ci_low']:+.2f}, {row['vs_scratch_diff_ci_high']:+.2f}]"
    if _isnan(row["vs_scratch_p"]):
        return diff, f"- (n={row['vs_scratch_pairs']})"
    weak = "†" if row["vs_scratch_min_p"] >= 0.05 else ""
    return diff, f"{row['vs_scratch_p']:.3g}{weak} (n={row['vs_scratch_pairs']})"


DISPLAY = [("UAR", "unit_uar"), ("acc", "unit_acc"), ("F1", "unit_f1"), ("sens", "unit_sens"),
           ("spec", "unit_spec"), ("AUC", "unit_auc")]


def headers(unit: str, reference: str | None, positive: str = "", threshold: str = "youden"
            ) -> list[str]:
    """The display table's column names; sensitivity and specificity name the positive class."""
    ref = reference or "scratch"
    named = ({"sens": f"sens (positive: {positive})", "spec": f"spec (positive: {positive})"}
             if positive else {})
    return (["strategy", "runs", f"{unit} UAR", f"{unit} UAR pooled [95% CI]",
             f"Δ pooled {unit} UAR vs {ref} [95% CI]", f"p vs {ref}"]
            + [f"{unit} {named.get(h, h)}" for h, _ in DISPLAY[1:5]]
            + [f"{unit} sens / spec at threshold ({threshold})", f"{unit} AUC",
               "segment UAR", "gap MMD", "gap A-dist"])


def _at_threshold(row: pd.Series) -> str:
    if _isnan(row.get("unit_sens_thr", math.nan)):
        return "-"
    return f"{row['unit_sens_thr']:.2f} / {row['unit_spec_thr']:.2f}"


def _cells(row: pd.Series, reference: str | None) -> list[str]:
    name = row["strategy"] + (" [speaker-dependent]" if row["speaker_dependent"] else "")
    cells = [name, f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")]
    cells += [_pm(row["unit_uar_mean"], row["unit_uar_std"]), _ci(row), *_p(row, reference)]
    cells += [_pm(row[f"{k}_mean"], row[f"{k}_std"]) for _, k in DISPLAY[1:5]]
    cells += [_at_threshold(row), _pm(row["unit_auc_mean"], row["unit_auc_std"])]
    cells += [_pm(row["segment_uar_mean"], row["segment_uar_std"])]
    cells += [_f(row["gap_mmd_mean"]), _f(row["gap_a_distance_mean"])]
    return cells


def threshold_note(unit: str, positive: str, rule: str, specificity: float) -> str:
    """What the sensitivity/specificity columns mean."""
    chosen = RULE_TEXT[rule].format(unit=unit, spec=specificity)
    return (f"sens / spec: sensitivity (recall of the positive class, {positive}) and "
            f"specificity (recall of the others) at the argmax decision. At threshold: "
            f"the same at a threshold on the probability of {positive}: {chosen}, applied "
            f"unchanged to its test fold (the test {unit}s never choose it); pooled over the "
            f"test {unit}s of a seed, mean over seeds. Intervals, thresholds and ROC/PR "
            f"curves: report.html (operating points).")


def _header_args(table: pd.DataFrame) -> tuple[str, str | None, str, str]:
    a = table.attrs
    return a.get("unit", "subject"), a.get("reference"), a.get("positive", ""), \
        a.get("threshold", "youden")


def markdown(table: pd.DataFrame, title: str = "") -> str:
    """table.md: the display table and what its columns mean."""
    unit, ref, positive, rule = _header_args(table)
    hs = headers(unit, ref, positive, rule)
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(hs) + " |", "|" + "---|" * len(hs)]
    lines += ["| " + " | ".join(_cells(row, ref)) + " |" for _, row in table.iterrows()]
    if not table.empty and table["speaker_dependent"].any():
        lines += ["", "Rows marked [speaker-dependent] come from a random split of segments: the "
                  "same subjects are in train and test, so they measure speaker recognition as "
                  "much as depression."]
    if not table.empty and not math.isnan(table["source_acc"].max()):
        src = table.dropna(subset=["source_acc"]).iloc[0]
        lines += ["", f"Source pretraining (held-out speakers): accuracy {src['source_acc']:.3f}, "
                  f"UAR {src['source_uar']:.3f}."]
    lines += ["", f"Decision unit: the {unit} (what a label belongs to). A {unit}'s decision is "
              f"the argmax of the mean probability of its test segments. Mean ± std over folds "
              f"x seeds. Pooled [95% CI]: the {unit} UAR over all test {unit}s of a seed (each "
              f"in its own fold), mean over seeds, with a 95 % percentile bootstrap interval "
              f"(the test {unit}s resampled {N_BOOTSTRAP} times, the same draw for every seed). "
              "gap: domain gap of `general` features between held-out source and target test "
              "data (MMD; proxy A-distance, 0 = indistinguishable, 2 = separable)."]
    if positive:
        lines += ["", threshold_note(unit, positive, rule, table.attrs.get("specificity", 0.8))]
    if ref is not None:
        lines += ["", f"Δ vs {ref}: the pooled {unit} UAR minus {ref}'s on the same test "
                  f"{unit}s, with a paired 95 % bootstrap interval (every resample draws the "
                  f"same {unit}s for both rows, so how hard a {unit} is cancels out; an "
                  f"interval above 0 is an effect beyond the error bars). "
                  f"p vs {ref}: the mean difference of the {unit} UAR over the same "
                  f"(fold, seed) runs (n pairs) and the two-sided paired permutation test of it "
                  f"(scipy.stats.permutation_test, sign flips of the per-run differences, exact "
                  f"up to 16 pairs). A permutation test rather than Wilcoxon: per-fold UARs of "
                  f"small folds tie and often equal {ref}'s, which Wilcoxon drops, while the "
                  f"exact test uses every pair and says what few pairs can show: with n pairs "
                  f"the smallest possible p is 2/2^n. † marks n < 6, where p < 0.05 is "
                  f"impossible whatever the scores. p-values are not adjusted for the "
                  f"{max(len(table) - 1, 1)} comparisons with {ref}."]
    return "\n".join(lines) + "\n"


def print_table(table: pd.DataFrame, title: str = "") -> None:
    """The display table on the console."""
    unit, ref, positive, rule = _header_args(table)
    t = Table(title=escape(title), show_lines=False)
    for h in headers(unit, ref, positive, rule):
        t.add_column(h, justify="left" if h == "strategy" else "right", no_wrap=True)
    for _, row in table.iterrows():
        t.add_row(*(escape(c) for c in _cells(row, ref)),
                  style="yellow" if row["speaker_dependent"] else None)
    from rich.console import Console

    Console(width=max(320, console.width), stderr=False).print(t)
    if not table.empty and table["speaker_dependent"].any():
        console.print("speaker-dependent rows: random segment split, subjects leak between "
                      "train and test", style="yellow")


# --- leak report -----------------------------------------------------------------------------
def leak_table(records: list[RunRecord], order: list[str], protocol: str | None = None
               ) -> pd.DataFrame | None:
    """Per strategy and compared protocol: the honest and the compared scores and their
    difference; None when the records hold one protocol only."""
    records = latest(records)
    honest = primary_protocol(records, protocol)
    others = [p for p in dict.fromkeys(r.protocol for r in records) if p != honest]
    if not others:
        return None
    base = build_table(records, order, protocol=honest).set_index("strategy")
    unit = unit_of(records)
    rows = []
    for other in others:
        comp = build_table(records, order, protocol=other).set_index("strategy")
        leaky = bool(comp["speaker_dependent"].any())
        for label in base.index.intersection(comp.index, sort=False):
            h, c = base.loc[label], comp.loc[label]
            rows.append({
                "strategy": label, "honest_protocol": honest, "compared_protocol": other,
                "compared_speaker_dependent": leaky, "unit": unit,
                "honest_unit_uar": h["unit_uar_pooled"], "compared_unit_uar": c["unit_uar_pooled"],
                "unit_uar_difference": c["unit_uar_pooled"] - h["unit_uar_pooled"],
                "honest_unit_uar_ci_low": h["unit_uar_ci_low"],
                "honest_unit_uar_ci_high": h["unit_uar_ci_high"],
                "compared_unit_uar_ci_low": c["unit_uar_ci_low"],
                "compared_unit_uar_ci_high": c["unit_uar_ci_high"],
                "honest_segment_uar": h["segment_uar_mean"],
                "compared_segment_uar": c["segment_uar_mean"],
                "segment_uar_difference": c["segment_uar_mean"] - h["segment_uar_mean"],
                "honest_runs": h["runs"], "compared_runs": c["runs"]})
    return pd.DataFrame(rows)


def _why(honest: str, other: str, leaky: bool, unit: str) -> str:
    if leaky:
        return (f"Why they differ: `{other}` splits segments at random, so the speaker of every "
                f"test {unit} (often the very recording, in overlapping windows) is also in "
                f"training and the model can score by recognising speakers; `{honest}` never "
                f"tests a speaker it trained on. The difference is the part of the `{other}` "
                f"score that would not carry over to new people.")
    return (f"Why they differ: both protocols keep speakers apart; the difference comes from "
            f"the number and size of the folds (training data per fold, test {unit}s per "
            f"fold), not from a leak.")


def leak_markdown(leak: pd.DataFrame, title: str = "") -> str:
    """leak.md: per compared protocol, the honest and compared scores and why they differ."""
    lines = [f"# Leak report{': ' + title if title else ''}", ""]
    for other, part in leak.groupby("compared_protocol", sort=False):
        first = part.iloc[0]
        honest, unit = first["honest_protocol"], first["unit"]
        tag = " (speaker-dependent)" if first["compared_speaker_dependent"] else ""
        hs = ["strategy", f"{unit} UAR {honest}", f"{unit} UAR {other}{tag}", "difference",
              f"segment UAR {honest}", f"segment UAR {other}", "difference"]
        lines += [f"## {honest} vs {other}", "",
                  "| " + " | ".join(hs) + " |", "|" + "---|" * len(hs)]
        for _, r in part.iterrows():
            hci = (f" [{r['honest_unit_uar_ci_low']:.2f}, {r['honest_unit_uar_ci_high']:.2f}]"
                   if not _isnan(r["honest_unit_uar_ci_low"]) else "")
            cci = (f" [{r['compared_unit_uar_ci_low']:.2f}, {r['compared_unit_uar_ci_high']:.2f}]"
                   if not _isnan(r["compared_unit_uar_ci_low"]) else "")
            lines.append("| " + " | ".join([
                r["strategy"], _f(r["honest_unit_uar"]) + hci, _f(r["compared_unit_uar"]) + cci,
                _signed(r["unit_uar_difference"]), _f(r["honest_segment_uar"]),
                _f(r["compared_segment_uar"]), _signed(r["segment_uar_difference"])]) + " |")
        lines += ["", _why(honest, str(other), bool(first["compared_speaker_dependent"]), unit),
                  "", f"{unit} UAR: pooled over the test {unit}s of each seed, mean over seeds, "
                  f"95 % bootstrap CI in brackets (as in table.md); segment UAR: mean over runs; "
                  f"difference = {other} - {honest}.", ""]
    return "\n".join(lines)


def _signed(v: float) -> str:
    return "-" if _isnan(v) else f"{v:+.3f}"


def print_leak(out_dir: Path) -> None:
    """Print ``leak.md`` of a results folder, if there is one."""
    path = Path(out_dir) / "leak.md"
    if path.is_file():
        print(path.read_text(encoding="utf-8"))


def write_outputs(out_dir: Path, records: list[RunRecord], order: list[str], source: dict | None,
                  title: str, plots: bool = True, protocol: str | None = None,
                  report: ReportConfig | None = None, tensorboard: Path | None = None,
                  spaces: dict[str, list] | None = None) -> pd.DataFrame:
    """Everything a results folder shows, from its records: table.md/table.csv (and
    leak.md/leak.csv where several protocols ran), figures, the report's sections
    (operating points, calibration, subgroups, EmoBox predictions) and report.html; for a
    sweep also sweep.md/sweep.csv, and the table and sections are the tuned ones (each run's
    draw selected on its validation subjects); with ``tensorboard``, the runs' curves as
    TensorBoard event files there."""
    records = latest(records)
    all_records = records
    protocol = primary_protocol(records, protocol)
    if is_sweep(records):
        unlabelled = any(r.validation is not None and r.validation.rule for r in records)
        records = write_sweep(out_dir, records, order, protocol, spaces, title, plots)
        title += (" - tuned: each fold's draw selected by a label-free rule (sweep.md)"
                  if unlabelled else
                  " - tuned: each fold's draw selected on validation subjects (sweep.md)")
    report = report or ReportConfig()
    table = build_table(records, order, source, protocol, report)
    with atomic_path(out_dir / "table.csv") as tmp:  # no table.csv.tmp left on a full disk
        table.to_csv(tmp, index=False)
    text = markdown(table, title)
    leak = leak_table(records, order, protocol)
    leak_text = ""
    if leak is not None:
        with atomic_path(out_dir / "leak.csv") as tmp:
            leak.to_csv(tmp, index=False)
        leak_text = leak_markdown(leak, title)
        atomic_write_text(out_dir / "leak.md", leak_text)
        text += ("\nThe same strategies under " + ", ".join(
            f"`{p}`" for p in dict.fromkeys(leak["compared_protocol"]))
            + ": see leak.md.\n")
    from transfer.report.selection import write_selection

    honest = [r for r in records if r.protocol == protocol]  # records are the latest already
    if write_selection(out_dir, honest, order):
        text += "\nLabel-free model selection, each rule's regret: see selection.md.\n"
    atomic_write_text(out_dir / "table.md", text)
    if plots:
        from transfer.report.plots import write_plots

        write_plots(out_dir, honest, order or list(table["strategy"]))
    from transfer.report.build import write_report

    write_report(out_dir, honest, order, table, report, title or "results", plots=plots,
                 table_md=text.split("\n", 2)[2] if text.startswith("# ") else text,
                 leak_md=leak_text)
    if tensorboard is not None:
        from transfer.report.tensorboard import write_tensorboard

        write_tensorboard(tensorboard, all_records)
    return table


def report_settings(out: Path, sets: list[str]) -> ReportConfig:
    """The ``[report]`` settings a results folder was run with (its recipe.json), with
    ``--set report.KEY=VALUE`` overrides checked as in a recipe."""
    from transfer.grid.recipe import apply_set, parse_recipe

    saved = out / "recipe.json"
    data = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
    raw = {"report": dict(data.get("report") or {})}
    for assignment in sets:
        if not assignment.startswith("report."):
            raise UserError(f"--set {assignment}: only report.* settings can change in a "
                            "rebuild (the runs are done)")
        apply_set(raw, assignment)
    minimal = {"target": {"corpus": "-"}, "strategies": [{"name": "scratch"}], **raw}
    return parse_recipe(minimal).report


@main_guard
def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.report RESULTS_DIR``: rebuild a results folder's outputs."""
    parser = argparse.ArgumentParser(prog="python -m transfer.report",
                                     description="Rebuild the tables, figures and report.html "
                                                 "of a results dir from its run records.")
    parser.add_argument("results_dir")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="report.KEY=VALUE",
                        help="another report setting, e.g. report.threshold=specificity")
    parser.add_argument("--tensorboard", metavar="DIR", help="also write the runs' curves as "
                        "TensorBoard event files into DIR (needs the tensorboard extra)")
    args = parser.parse_args(argv)
    out = Path(args.results_dir)
    records = read_records(out / "runs.jsonl")
    if not records:
        raise UserError(f"no run records in {out / 'runs.jsonl'}")
    meta = read_summary(out)
    if "plan" in meta:  # only the runs of the grid that wrote the folder (older ones: all)
        records = planned(records, set(meta["plan"]))
        if not records:
            raise UserError(f"none of the records in {out / 'runs.jsonl'} is a run of the plan "
                            f"that {out / 'summary.json'} lists")
    if args.tensorboard:
        from transfer.report.tensorboard import require_tensorboard

        require_tensorboard()
    table = write_outputs(out, records, meta.get("order", []), meta.get("source"),
                          meta.get("title", out.name), plots=not args.no_plots,
                          protocol=meta.get("protocol"), report=report_settings(out, args.set),
                          tensorboard=Path(args.tensorboard) if args.tensorboard else None,
                          spaces=meta.get("spaces"))
    print_table(table, meta.get("title", ""))
    print_leak(out)
    console.print(f"report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
