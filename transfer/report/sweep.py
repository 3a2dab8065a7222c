"""What a sweep selected, and what selection cost: sweep.md, sweep.csv and one figure per strategy.

Per (strategy, protocol, fold, seed) a sweep trained several draws of hyperparameters. The
**selected** draw is the one with the best score on that fold's validation subjects (unit UAR,
ties by lower validation loss); the test fold is never looked at. Its test score is what the
tuned table reports. Reported apart:

- **default**: draw 0, the recipe's own settings (today's table);
- **oracle**: the draw with the best *test* score, an upper bound that no honest procedure can
  reach (it selects on the test fold), shown only to size the selection's regret;
- **regret**: oracle minus selected, per fold and seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transfer.common.cache import atomic_path, atomic_write_text
from transfer.grid.records import RunRecord

METRIC = "unit_uar"


def is_sweep(records: list[RunRecord]) -> bool:
    """Whether the records hold more than one draw of some run."""
    return any(r.draw for r in records)


def _val_rank(r: RunRecord) -> tuple[float, float]:
    """How selection ranks a run's draw (:attr:`Validation.rank`; none recorded: last)."""
    return r.validation.rank if r.validation else (-math.inf, -math.inf)


def _groups(records: list[RunRecord]) -> dict[tuple, list[RunRecord]]:
    out: dict[tuple, list[RunRecord]] = {}
    for r in records:
        out.setdefault((r.strategy, r.protocol, r.fold, r.seed), []).append(r)
    return out


def selected(records: list[RunRecord]) -> list[RunRecord]:
    """Per (strategy, protocol, fold, seed), the finished draw with the best validation score
    (unit UAR, ties by lower validation loss, then the lower draw); a group with no finished
    draw keeps its draw-0 record (a failure shows in the table)."""
    out = []
    for group in _groups(records).values():
        ok = [r for r in group if r.ok]
        if ok:
            out.append(max(ok, key=lambda r: (*_val_rank(r), -r.draw)))
        else:
            out.append(min(group, key=lambda r: r.draw))
    return out


def oracle(records: list[RunRecord]) -> list[RunRecord]:
    """Per group, the finished draw with the best *test* score (an upper bound, not a result)."""
    out = []
    for group in _groups(records).values():
        ok = [r for r in group if r.ok]
        if ok:
            out.append(max(ok, key=lambda r: (r.metrics.get(METRIC, -math.inf), -r.draw)))
    return out


def defaults(records: list[RunRecord]) -> list[RunRecord]:
    """The draw-0 records: the recipe's own settings."""
    return [r for r in records if not r.draw]


def selection_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (strategy, protocol, fold, seed): the selected draw and its settings, its
    validation and test scores, the default's and the oracle's test scores, the regret."""
    rows = []
    for (label, protocol, fold, seed), group in _groups(records).items():
        ok = [r for r in group if r.ok]
        if not ok:
            continue
        sel = selected(group)[0]
        best = oracle(group)[0]
        default = next((r for r in ok if not r.draw), None)
        test = sel.metric(METRIC)
        rows.append({
            "strategy": label, "protocol": protocol, "fold": fold, "seed": seed,
            "draws": len(group), "finished": len(ok),
            "stopped_by_halving": sum(1 for r in ok if r.stopped == "halving"),
            "selected_draw": sel.draw, "selected": _describe(sel.hparams),
            "selected_val": sel.validation.unit_uar if sel.validation else math.nan,
            "selected_test": test,
            "default_test": default.metric(METRIC) if default else math.nan,
            "oracle_draw": best.draw,
            "oracle_test": best.metric(METRIC),
            "regret": best.metric(METRIC) - test,
        })
    return pd.DataFrame(rows)


def _describe(values: dict[str, Any]) -> str:
    if not values:
        return "defaults"
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float)
                     else f"{k.split('.')[-1]}={v}" for k, v in values.items())


def summary(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per strategy: mean default / tuned / oracle test score, mean regret, and how stable the
    choice is (the share of folds x seeds that selected the most frequent draw)."""
    rows = []
    for label in order:
        mine = frame[frame["strategy"] == label]
        if mine.empty:
            continue
        counts = mine["selected_draw"].value_counts()
        rows.append({
            "strategy": label, "runs": len(mine), "draws": int(mine["draws"].max()),
            "default": mine["default_test"].mean(), "tuned": mine["selected_test"].mean(),
            "oracle": mine["oracle_test"].mean(), "regret": mine["regret"].mean(),
            "regret_max": mine["regret"].max(),
            "most_selected_draw": int(counts.index[0]),
            "stability": float(counts.iloc[0] / len(mine)),
            "default_selected": float((mine["selected_draw"] == 0).mean()),
        })
    return pd.DataFrame(rows)


def selected_by(records: list[RunRecord]) -> str:
    """What selected the draws: the validation subjects' labels, or (an unlabelled target)
    the recipe's label-free rule."""
    rule = next((r.validation.rule for r in records if r.validation and r.validation.rule),
                None)
    if rule:
        return (f"best score of the label-free rule `{rule}` (the target's labels are hidden; "
                "selection.md says how far each rule can be trusted)")
    return "best validation-subject score (unit UAR, ties by validation loss)"


def sweep_markdown(frame: pd.DataFrame, summ: pd.DataFrame, spaces: dict[str, list],
                   title: str = "", by: str = "") -> str:
    """sweep.md: what selection means, the per-strategy summary, the spaces, every choice.
    ``by``: what selected the draws (:func:`selected_by`)."""
    f = "{:.3f}".format
    by = by or selected_by([])
    lines = [f"# Sweep: {title}" if title else "# Sweep", "",
             "Every strategy had the same random search. Per fold and seed the draw with the "
             f"{by} was selected; the test fold was not looked at. **tuned** is the mean "
             "test unit UAR of the selected draws (the comparison table); **default** is "
             "draw 0, the recipe's settings; **oracle** selects on the test fold: an upper "
             "bound, not a result; **regret** = oracle - tuned. **stability**: share of folds "
             "x seeds that selected "
             "the most frequent draw.", "",
             "| strategy | runs | draws | default | tuned | oracle | regret (max) | stability "
             "| default selected |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in summ.iterrows():
        lines.append(f"| {r['strategy']} | {r['runs']} | {r['draws']} | {f(r['default'])} | "
                     f"{f(r['tuned'])} | {f(r['oracle'])} | {f(r['regret'])} "
                     f"({f(r['regret_max'])}) | {r['stability']:.2f} (draw "
                     f"{r['most_selected_draw']}) | {r['default_selected']:.2f} |")
    lines += ["", "## Search spaces", ""]
    for label, rows in spaces.items():
        lines.append(f"- **{label}**: " + ("; ".join(f"`{k}` {d}" for k, d in rows)
                                           or "nothing to tune"))
    lines += ["", "## Selected per fold and seed", "",
              "| strategy | fold | seed | selected draw | settings | val | test | default | "
              "oracle (draw) | regret | halved |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['strategy']} | {r['fold']} | {r['seed']} | {r['selected_draw']} | "
                     f"{r['selected']} | {f(r['selected_val'])} | {f(r['selected_test'])} | "
                     f"{f(r['default_test'])} | {f(r['oracle_test'])} ({r['oracle_draw']}) | "
                     f"{f(r['regret'])} | {r['stopped_by_halving']} of {r['draws']} |")
    return "\n".join(lines) + "\n"


def plot_sweep(out_dir: Path, records: list[RunRecord], order: list[str]) -> list[Path]:
    """Per strategy, the validation score of every finished draw against each tuned setting
    (log axis for settings spanning more than a decade)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transfer.report.plots import _safe

    written = []
    (out_dir / "figures").mkdir(exist_ok=True)
    for label in order:
        ok = [r for r in records if r.strategy == label and r.ok and r.hparams]
        names = list(dict.fromkeys(k for r in ok for k in r.hparams))
        if not names:
            continue
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            _scatter(ax, ok, name)
        fig.suptitle(f"{label}: validation score per draw")
        fig.tight_layout()
        path = out_dir / "figures" / f"sweep_{_safe(label)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(path)
    return written


def _scatter(ax: Any, records: list[RunRecord], name: str) -> None:
    """One setting's values against the validation score (log axis over a decade or more)."""
    pts = [(r.hparams[name], _val_rank(r)[0]) for r in records
           if isinstance(r.hparams.get(name), (int, float))]
    xs = np.array([p[0] for p in pts], dtype=float)
    ys = np.array([p[1] for p in pts], dtype=float)
    ax.scatter(xs, ys, s=14, alpha=0.7)
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 10:
        ax.set_xscale("log")
    ax.set_xlabel(name.split(".")[-1])
    ax.set_ylabel("validation unit UAR")


def write_sweep(out_dir: Path, records: list[RunRecord], order: list[str], protocol: str,
                spaces: dict[str, list] | None = None, title: str = "",
                plots: bool = True) -> list[RunRecord]:
    """Write sweep.md, sweep.csv, sweep_summary.csv and the figures; return the records the
    tuned table is built from (the selected draw of every run under ``protocol``, and the
    other protocols' runs as they are)."""
    tuned = [r for r in records if r.protocol == protocol]
    frame = selection_frame(tuned)
    summ = summary(frame, order)
    with atomic_path(out_dir / "sweep.csv") as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(out_dir / "sweep_summary.csv") as tmp:
        summ.to_csv(tmp, index=False)
    atomic_write_text(out_dir / "sweep.md", sweep_markdown(frame, summ, spaces or {}, title,
                                                           selected_by(tuned)))
    if plots:
        plot_sweep(out_dir, tuned, order)
    others = [r for r in records if r.protocol != protocol]
    return selected(tuned) + others
