"""The report's sections beyond the comparison table, built from the run records alone: operating
points, calibration and subgroups. Each gives a table (written as CSV) and its Markdown text
(shown in report.html) with what the numbers mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from transfer.common.config import ReportConfig
from transfer.evaluate.calibration import BINS, calibration_summary
from transfer.evaluate.operating import operating_point, pooled_scores, positive_index
from transfer.evaluate.stats import N_BOOTSTRAP, Interval
from transfer.evaluate.subgroups import subgroup_table
from transfer.grid.records import RunRecord


def _ok(records: list[RunRecord], label: str) -> list[RunRecord]:
    """The finished runs of strategy ``label`` that hold their test units' outputs."""
    return [r for r in records if r.strategy == label and r.scored]


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _ci(point: float, low: float, high: float, digits: int = 2) -> str:
    if _isnan(point):
        return "-"
    text = f"{point:.{digits}f}"
    return text if _isnan(low) else f"{text} [{low:.2f}, {high:.2f}]"


def _interval(prefix: str, ci: Interval | None) -> dict[str, float]:
    ci = ci or Interval(math.nan, math.nan, math.nan, 0, 0)
    return {prefix: ci.point, f"{prefix}_low": ci.low, f"{prefix}_high": ci.high}


def _table_md(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows])


# --- operating points --------------------------------------------------------------------------
RULE_TEXT = {"youden": "the threshold that maximises Youden's J (sensitivity + specificity - 1) "
                       "on the run's validation {unit}s",
             "specificity": "the lowest threshold whose specificity on the run's validation "
                            "{unit}s reaches {spec:g}"}


def pooled_auc(records: list[RunRecord]) -> tuple[float, float]:
    """ROC-AUC and average precision of every run's test units pooled (NaN with one class)."""
    y, score = pooled_scores(records)
    if len(np.unique(y)) < 2:
        return math.nan, math.nan
    return float(roc_auc_score(y, score)), float(average_precision_score(y, score))


def operating_table(records: list[RunRecord], order: list[str], report: ReportConfig) -> pd.DataFrame:
    """Per strategy: the validation thresholds and the pooled test sensitivity/specificity at
    them and at the argmax, with intervals; pooled ROC-AUC and average precision."""
    rows = []
    for label in order:
        ok = _ok(records, label)
        point = operating_point(ok, report.threshold, report.specificity)
        if point is None:
            continue
        auc, ap = pooled_auc(ok)
        rows.append({"strategy": label, "positive": ok[0].labels[positive_index(ok[0])],
                     "rule": report.threshold, "runs": point.runs, "fallbacks": point.fallbacks,
                     "threshold_mean": point.threshold_mean, "threshold_min": point.threshold_min,
                     "threshold_max": point.threshold_max,
                     **_interval("sens_threshold", point.sens),
                     **_interval("spec_threshold", point.spec),
                     **_interval("sens_argmax", point.sens_argmax),
                     **_interval("spec_argmax", point.spec_argmax),
                     "pooled_auc": auc, "pooled_ap": ap})
    return pd.DataFrame(rows)


def operating_markdown(table: pd.DataFrame, unit: str, report: ReportConfig) -> str:
    """The operating points section: the table and what it means."""
    if table.empty:
        return ("No operating points: the task has no positive class (more than two labels), "
                "or the runs hold no validation outputs (records written before they were "
                "stored).")
    pos = table["positive"].iloc[0]
    head = ["strategy", "runs", "threshold mean [min, max]", f"sens ({pos}) at threshold",
            "spec at threshold", f"sens ({pos}) at argmax", "spec at argmax", "pooled AUC",
            "pooled AP"]
    rows = [[r["strategy"], f"{r['runs']}" + (f" ({r['fallbacks']} at 0.5)" if r["fallbacks"]
                                             else ""),
             f"{r['threshold_mean']:.2f} [{r['threshold_min']:.2f}, {r['threshold_max']:.2f}]",
             *(_ci(r[k], r[f"{k}_low"], r[f"{k}_high"]) for k in
               ("sens_threshold", "spec_threshold", "sens_argmax", "spec_argmax")),
             _ci(r["pooled_auc"], math.nan, math.nan, 3), _ci(r["pooled_ap"], math.nan, math.nan, 3)]
            for _, r in table.iterrows()]
    chosen = RULE_TEXT[report.threshold].format(unit=unit, spec=report.specificity)
    return "\n".join(_table_md(head, rows) + [
        "", f"Positive class: {pos}. Each run calls a {unit} {pos} when its mean probability of "
        f"{pos} is at least the run's threshold: {chosen} (`[report] threshold`). The test fold "
        f"never chooses it. Sensitivity is the share of {pos} {unit}s called {pos}, "
        f"specificity the share of the others not called {pos}; both pooled over the test "
        f"{unit}s of a seed (mean over seeds) with 95 % bootstrap intervals over the {unit}s "
        f"({N_BOOTSTRAP} resamples). At argmax: the model's own decision (threshold 0.5). "
        f"\"at 0.5\": runs whose validation {unit}s could not set a threshold (one class "
        "only, or nothing better than chance) and used 0.5. Pooled AUC / AP: the area under "
        f"the ROC and precision-recall curves of every run's test {unit}s pooled (figure "
        "below); pooling mixes the runs' models, so it can differ from the mean per-run AUC "
        "of the comparison table."])


# --- calibration -------------------------------------------------------------------------------
CAL_KEYS = ("unit_ece", "unit_brier", "segment_ece", "segment_brier")


def calibration_table(records: list[RunRecord], order: list[str]) -> tuple[pd.DataFrame, dict]:
    """Per strategy: ECE and Brier score of test units and segments before and after
    temperature scaling, and the temperatures; with the pooled bins per strategy (figures)."""
    rows, bins = [], {}
    for label in order:
        ok = _ok(records, label)
        if not ok:
            continue
        summary = calibration_summary(ok, positive_index(ok[0]))
        bins[label] = {k: v for k, v in summary.items() if "_bins_" in k}
        rows.append({"strategy": label, **{k: v for k, v in summary.items() if "_bins_" not in k}})
    return pd.DataFrame(rows), bins


def calibration_markdown(table: pd.DataFrame, unit: str, report: ReportConfig) -> str:
    """The calibration section: the table and what it means."""
    if table.empty:
        return "No calibration: no finished runs."
    after = report.temperature and "temperature_mean" in table
    head = ["strategy", "runs", f"{unit} ECE", f"{unit} Brier", "segment ECE", "segment Brier"]
    if after:
        head.append("temperature mean [min, max]")

    def cell(r: pd.Series, key: str) -> str:
        text = "-" if _isnan(r[f"{key}_before"]) else f"{r[f'{key}_before']:.3f}"
        if after and not _isnan(r[f"{key}_after"]):
            text += f" → {r[f'{key}_after']:.3f}"
        return text

    rows = []
    for _, r in table.iterrows():
        row = [r["strategy"], str(r["runs"]), *(cell(r, k) for k in CAL_KEYS)]
        if after:
            row.append(f"{r['temperature_mean']:.2f} [{r['temperature_min']:.2f}, "
                       f"{r['temperature_max']:.2f}]")
        rows.append(row)
    text = (f"Are the probabilities honest? ECE (expected calibration error): the test "
            f"predictions binned by confidence (the top class's probability, {BINS} equal "
            "bins), the mean over predictions of |accuracy - confidence| of their bin; 0 is "
            "perfectly calibrated. Brier score: the mean squared error of the probability of "
            "the positive class against the 0/1 label for two classes (of the probability "
            "vector against the one-hot label otherwise); lower is better. "
            f"{unit.capitalize()}: the mean probability of a {unit}'s segments, every run's "
            "test units pooled; segment: every test segment of every run.")
    if after:
        text += (" a → b: before → after temperature scaling. Each run fits one temperature T "
                 "on its validation segments (the validation speakers, never the test fold; "
                 "T > 1 softens over-confident probabilities, T < 1 sharpens timid ones) and "
                 "divides its log-probabilities by it. T changes no decision, so accuracy, UAR "
                 "and AUC stay as they are. A run whose validation segments hold one class, or "
                 "are all classified right, keeps T = 1 (no best T exists). With a few "
                 "validation speakers per run T is a noisy estimate: when the after column is "
                 "worse, the validation set is too small to calibrate on.")
    return "\n".join(_table_md(head, rows) + ["", text])


# --- subgroups ---------------------------------------------------------------------------------
def no_covariates_note(records: list[RunRecord]) -> str:
    """Why the records have no subgroups."""
    notes = [r.covariates_note for r in records if r.covariates_note]
    return notes[0] if notes else "the run records hold no subject covariates"


def subgroups_markdown(table: pd.DataFrame, how: dict[str, str], records: list[RunRecord],
                       unit: str, positive: str) -> str:
    """The subgroups section: one table per covariate and what it means (or why none)."""
    if table.empty:
        return f"No subgroups: {no_covariates_note(records)}."
    pos = f" ({positive})" if positive else ""
    lines = []
    for name, part in table.groupby("covariate", sort=False):
        ref = part["group"].iloc[0]
        gaps = [m for m in ("uar", "sens", "spec") if f"{m}_gap" in part]
        title = {"uar": "UAR", "sens": f"sens{pos}", "spec": "spec"}
        head = ["strategy", name, f"{unit}s", "UAR [95% CI]", f"sens{pos} [95% CI]",
                "spec [95% CI]", *(f"{title[m]} gap vs {ref} [95% CI] p" for m in gaps)]
        rows = []
        for _, r in part.iterrows():
            cells = [r["strategy"], str(r["group"]), str(r["units"]),
                     *(_ci(r[m], r[f"{m}_low"], r[f"{m}_high"]) for m in ("uar", "sens", "spec"))]
            cells += ["ref" if r["group"] == ref else _gap_cell(r, m) for m in gaps]
            rows.append(cells)
        lines += [f"# by {name}", "", *_table_md(head, rows), ""]
        if name in how:
            lines += [f"{name}: {how[name]}.", ""]
    lines.append(
        f"Per group: the {unit}s of that group among every run's test {unit}s, pooled per "
        f"seed (mean over seeds), with 95 % bootstrap intervals over the group's {unit}s. "
        f"Gap: the group's pooled UAR (sensitivity, specificity) minus the first group's, "
        f"with a bootstrap interval that resamples each group on its own: it carries the "
        f"chance of which subjects fall in a group, so an interval that excludes 0 is a gap "
        f"beyond the error bars. p: the two-sided paired permutation test of the per-run gaps "
        f"(both groups are scored by the same runs; n runs; † marks n < 6, where p < 0.05 is "
        f"impossible): whether the gap holds across folds and training; runs of several seeds "
        f"test the same subjects, so read the interval first. Small groups give wide "
        f"intervals.")
    return "\n".join(lines)


def _gap_cell(r: pd.Series, metric: str) -> str:
    """'gap [low, high] p (n)' of one metric."""
    text = _ci(r[f"{metric}_gap"], r[f"{metric}_gap_low"], r[f"{metric}_gap_high"])
    if text == "-" or _isnan(r.get(f"{metric}_gap_p")):
        return text
    weak = "†" if r[f"{metric}_gap_min_p"] >= 0.05 else ""
    return f"{text} p {r[f'{metric}_gap_p']:.2g}{weak} (n={int(r[f'{metric}_gap_pairs'])})"


def subgroups(records: list[RunRecord], order: list[str], report: ReportConfig
              ) -> tuple[pd.DataFrame, dict[str, str]]:
    """The subgroup table (:func:`transfer.evaluate.subgroups.subgroup_table`)."""
    return subgroup_table(records, order, report.bands)
