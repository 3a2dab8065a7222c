"""Figures from run records: learning curves, confusion matrices, feature projections."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_plots(out_dir: Path, records: list[dict], order: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    written = []
    for label in order:
        ok = [r for r in records if r["strategy"] == label and r["status"] == "ok"]
        if not ok:
            continue
        # learning curves: training loss, validation UAR, and alignment losses where logged
        extra = sorted({k for r in ok for row in r["curves"] for k in row
                        if k.startswith(("align_", "autoencoder_")) or k in ("adv", "disc_acc")})
        panels = ["loss", "val_uar", *extra[:4]]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
        for ax, key in zip(axes[0], panels):
            for r in ok:
                xs = [row["epoch"] for row in r["curves"] if key in row]
                ys = [row[key] for row in r["curves"] if key in row]
                ax.plot(xs, ys, alpha=0.6, lw=1)
                if key == "val_uar" and r["best_epoch"] > 0:
                    ax.axvline(r["best_epoch"], color="grey", alpha=0.15, lw=0.8)
            ax.set_title(key)
            ax.set_xlabel("epoch")
        fig.suptitle(f"{label}: {len(ok)} runs (grey: selected epochs)")
        fig.tight_layout()
        written.append(_save(fig, fig_dir / f"curves_{_safe(label)}.png"))

        cm = np.sum([np.array(r["confusion"]) for r in ok], axis=0)
        names = ok[0]["labels"]
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
        written.append(_save(fig, fig_dir / f"confusion_{_safe(label)}.png"))

        proj = next((r["gap"]["projection"] for r in ok if "projection" in r.get("gap", {})), None)
        if proj:
            fig, ax = plt.subplots(figsize=(4, 3.6))
            for key, colour in (("source", "tab:orange"), ("target", "tab:blue")):
                pts = np.array(proj[key])
                if len(pts):
                    ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.5, c=colour, label=key)
            ax.legend()
            ax.set_title(f"{label}: general features (PCA)", fontsize=9)
            fig.tight_layout()
            written.append(_save(fig, fig_dir / f"features_{_safe(label)}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
