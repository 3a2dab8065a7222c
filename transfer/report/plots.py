"""Figures from run records: learning curves, confusion matrices, feature projections, and the
report's reliability diagrams, pooled ROC / precision-recall curves and subgroup intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.grid.records import RunRecord


def _safe(name: str) -> str:
    """A strategy label as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out_dir: Path, records: list[RunRecord], order: list[str]) -> list[Path]:
    """Per strategy: learning curves, the confusion matrix of all test segments and, where
    recorded, the PCA of source vs target features; written to ``out_dir/figures``."""
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    written = []
    for label in order:
        ok = [r for r in records if r.strategy == label and r.ok]
        if not ok:
            continue
        written.append(_curves(fig_dir, label, ok))
        written.append(_confusion(fig_dir, label, ok))
        proj = next((r.gap.projection for r in ok if r.gap and r.gap.projection), None)
        if proj:
            written.append(_projection(fig_dir, label, proj))
    return written


def _curves(fig_dir: Path, label: str, ok: list[RunRecord]) -> Path:
    """Training loss, validation UAR, and alignment losses where logged."""
    plt = _pyplot()
    extra = sorted({k for r in ok for row in r.curves for k in row.terms
                    if k.startswith(("align_", "autoencoder_")) or k in ("adv", "disc_acc")})
    panels = ["loss", "val_uar", *extra[:4]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for r in ok:
            points = [(row.epoch, row.scalars()[key]) for row in r.curves
                      if key in row.scalars()]
            ax.plot([x for x, _ in points], [y for _, y in points], alpha=0.6, lw=1)
            if key == "val_uar" and (r.best_epoch or 0) > 0:
                ax.axvline(r.best_epoch, color="grey", alpha=0.15, lw=0.8)
        ax.set_title(key)
        ax.set_xlabel("epoch")
    fig.suptitle(f"{label}: {len(ok)} runs (grey: selected epochs)")
    fig.tight_layout()
    return _save(fig, fig_dir / f"curves_{_safe(label)}.png")


def _confusion(fig_dir: Path, label: str, ok: list[RunRecord]) -> Path:
    """The confusion matrix of all test segments of a strategy's runs."""
    plt = _pyplot()
    cm = np.sum([np.array(r.confusion) for r in ok], axis=0)
    names = ok[0].labels
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, int(v), ha="center", va="center",
                color="white" if v > 0.6 * cm.max() else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{label} (test segments, all runs)", fontsize=9)
    fig.tight_layout()
    return _save(fig, fig_dir / f"confusion_{_safe(label)}.png")


def _projection(fig_dir: Path, label: str, proj: dict) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3.6))
    for key, colour in (("source", "tab:orange"), ("target", "tab:blue")):
        pts = np.array(proj[key])
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.5, c=colour, label=key)
    ax.legend()
    ax.set_title(f"{label}: general features (PCA)", fontsize=9)
    fig.tight_layout()
    return _save(fig, fig_dir / f"features_{_safe(label)}.png")


def _grid(n: int, size: tuple[float, float] = (3.2, 3.0)):
    plt = _pyplot()
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def reliability_figure(fig_dir: Path, bins: dict[str, dict], temperature: bool) -> Path | None:
    """Per strategy, the reliability diagram of its test segments (accuracy against mean
    confidence per bin, pooled over runs), before and after temperature scaling."""
    if not bins:
        return None
    fig, axes = _grid(len(bins))
    whens = ("before", "after") if temperature else ("before",)
    for ax, (label, b) in zip(axes, bins.items()):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for when, style in zip(whens, ("-o", "--s")):
            part = b[f"segment_bins_{when}"]
            count = np.asarray(part["count"], dtype=float)
            has = count > 0
            conf = np.asarray(part["conf"], dtype=float)[has] / count[has]
            acc = np.asarray(part["correct"], dtype=float)[has] / count[has]
            ax.plot(conf, acc, style, ms=3, lw=1,
                    label="raw" if when == "before" else "temperature-scaled")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Reliability of test segments (dotted: perfect calibration)", fontsize=10)
    fig.tight_layout()
    return _save(fig, fig_dir / "reliability.png")


def roc_pr_figure(fig_dir: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                  positive: str, unit: str) -> Path | None:
    """Pooled ROC and precision-recall curves of every strategy's test units
    (``curves``: strategy -> (is positive, probability of the positive class))."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    curves = {k: v for k, v in curves.items() if len(np.unique(v[0])) == 2}
    if not curves:
        return None
    plt = _pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4))
    for label, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        roc.plot(fpr, tpr, lw=1.2, label=f"{label} ({auc(fpr, tpr):.2f})")
        precision, recall, _ = precision_recall_curve(y, score)
        pr.plot(recall, precision, lw=1.2, label=label)
    roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    prevalence = float(np.mean(next(iter(curves.values()))[0]))
    pr.axhline(prevalence, color="grey", lw=0.8, ls=":")
    roc.set(xlabel="1 - specificity", ylabel=f"sensitivity ({positive})",
            title=f"ROC, pooled test {unit}s (AUC)")
    pr.set(xlabel=f"recall = sensitivity ({positive})", ylabel="precision",
           title=f"precision-recall (dotted: share of {positive})")
    roc.legend(fontsize=7, loc="lower right")
    pr.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, fig_dir / "roc_pr.png")


def subgroup_figure(fig_dir: Path, table: pd.DataFrame, unit: str) -> Path | None:
    """Per covariate, every strategy's UAR per group with its 95 % interval."""
    if table.empty:
        return None
    names = list(dict.fromkeys(table["covariate"]))
    fig, axes = _grid(len(names), (5.5, 0.45 * table["strategy"].nunique() + 1.6))
    for ax, name in zip(axes, names):
        part = table[table["covariate"] == name]
        groups = list(dict.fromkeys(part["group"]))
        strategies = list(dict.fromkeys(part["strategy"]))
        step = 0.8 / max(len(groups), 1)
        for g_i, group in enumerate(groups):
            rows = part[part["group"] == group].set_index("strategy").reindex(strategies)
            ys = np.arange(len(strategies)) + g_i * step
            low = (rows["uar"] - rows["uar_low"]).fillna(0).to_numpy()
            high = (rows["uar_high"] - rows["uar"]).fillna(0).to_numpy()
            ax.errorbar(rows["uar"].to_numpy(), ys, xerr=[low, high], fmt="o", ms=4, capsize=2,
                        label=f"{group}")
        ax.set_yticks(np.arange(len(strategies)) + step * (len(groups) - 1) / 2, strategies)
        ax.invert_yaxis()
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1.02)
        ax.set_xlabel(f"{unit} UAR [95% CI]")
        ax.set_title(f"by {name}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, fig_dir / "subgroups.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
