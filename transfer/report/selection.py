"""The selection report: how far each label-free model-selection rule can be trusted.

In the unlabelled mode every run records the scores of the rules of
:mod:`transfer.evaluate.selection` (computed from its outputs, no target label read). Among
the candidates of one (fold, seed) (the strategy entries of the recipe, without their
test-time adaptation variants: the runs that exist until hyperparameter sweeps do), a rule
picks the run with its highest score; its **regret** is the best test decision-unit UAR of
the candidates (the labelled oracle, known here because the test labels exist) minus the test
UAR of the run it picked. ``selection.md``/``selection.csv`` list every rule with its mean
regret over the (fold, seed) pairs, how often it picked the best run, and, for scale, the
expected regret of a random pick and of choosing by the target's validation labels (what a
few labels would give; not label-free).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.common.cache import atomic_path, atomic_write_text
from transfer.evaluate.selection import RULES
from transfer.grid.records import RunRecord

REFERENCES = {"random": "nothing (the mean over the candidates)",
              "target_val_uar": "target validation labels (not label-free)"}


def _candidates(records: list[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """The runs with selection scores, grouped by (protocol, fold, seed)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.ok and r.selection and r.adapt == "none":
            groups.setdefault((r.protocol, r.fold, r.seed), []).append(r)
    return {k: v for k, v in groups.items() if len(v) > 1}


def regrets(records: list[RunRecord]) -> dict[str, list[tuple[float, bool]]]:
    """Per rule (and reference), per (fold, seed) with two or more candidates: (regret, whether
    it picked a best run)."""
    out: dict[str, list[tuple[float, bool]]] = {rule: [] for rule in [*RULES, *REFERENCES]}
    for runs in _candidates(records).values():
        test = np.array([r.metric("unit_uar") for r in runs])
        best = np.nanmax(test)
        out["random"].append((float(np.nanmean(best - test)), False))
        for rule in [*RULES, "target_val_uar"]:
            scores = np.array([r.selection.get(rule, math.nan) for r in runs], dtype=float)
            if np.all(np.isnan(scores)):
                continue
            pick = int(np.nanargmax(scores))
            out[rule].append((float(best - test[pick]), bool(test[pick] >= best)))
    return out


def selection_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per rule: what it reads, its mean and worst regret, how often it picked the best
    run, over how many (fold, seed) pairs."""
    rows = []
    for rule, values in regrets(records).items():
        reg = np.array([v for v, _ in values], dtype=float)
        rows.append({"rule": rule, "reads": RULES.get(rule) or REFERENCES[rule],
                     "regret_mean": float(reg.mean()) if reg.size else math.nan,
                     "regret_max": float(reg.max()) if reg.size else math.nan,
                     "picked_best": (float(np.mean([b for _, b in values]))
                                     if values and rule != "random" else math.nan),
                     "pairs": int(reg.size)})
    return pd.DataFrame(rows)


def _f(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3f}"


def selection_markdown(table: pd.DataFrame, candidates: list[str]) -> str:
    """selection.md: every rule's regret (:func:`selection_table`) and how to read it."""
    lines = ["# Label-free model selection", "",
             f"Candidates per (fold, seed): {', '.join(candidates)}. Regret: the best test UAR "
             "of the candidates minus the test UAR of the one the rule picks (0 = it picks the "
             "best; the test labels are read here only to measure the rules).", "",
             "| rule | reads | mean regret | worst regret | picked the best | pairs |",
             "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        share = "-" if math.isnan(r["picked_best"]) else f"{r['picked_best']:.0%}"
        lines.append(f"| {r['rule']} | {r['reads']} | {_f(r['regret_mean'])} | "
                     f"{_f(r['regret_max'])} | {share} | {r['pairs']} |")
    lines += ["", "A rule is worth using where its regret is well below `random`'s. Rules that "
              "read source data are not available to a source-free user. The candidates are "
              "the recipe's strategy entries; with hyperparameter sweeps the same rules choose "
              "among the draws of one strategy.", ""]
    return "\n".join(lines)


def write_selection(out_dir: Path, records: list[RunRecord], order: list[str]) -> bool:
    """``selection.md``/``selection.csv`` where the records carry selection scores (the
    unlabelled mode) and some (fold, seed) has two or more candidates; returns whether
    written."""
    groups = _candidates(records)
    if not groups:
        return False
    table = selection_table(records)
    names = {r.strategy for runs in groups.values() for r in runs}
    candidates = [label for label in order if label in names] or sorted(names)
    with atomic_path(Path(out_dir) / "selection.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(Path(out_dir) / "selection.md", selection_markdown(table, candidates))
    return True
