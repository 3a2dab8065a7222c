"""TensorBoard event files of every run's curves (optional: the ``tensorboard`` extra).

``[log] tensorboard = true`` in a recipe (or ``python -m transfer.run ... --tensorboard DIR``,
``python -m transfer.report RESULTS_DIR --tensorboard DIR``) writes, per run, one event-file
folder ``<dir>/<strategy>/<protocol>/fold<f>-seed<s>`` (``-draw<d>`` for a sweep's other
draws) with every curve the run recorded per
epoch: ``train/loss`` (the target loss), the strategy's own losses (``train/align_mmd``,
``train/adv``, ...) and ``val/uar``, ``val/loss``. They are written from the run records as
each grid (or rebuild) ends; ``tensorboard --logdir DIR`` shows them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transfer import UserError
from transfer.grid.records import RunRecord

INSTALL = 'pip install -e ".[tensorboard]"  (or: pip install tensorboard)'


def require_tensorboard() -> None:
    """A one-line error now, before any training, when TensorBoard logging was asked for but
    the optional package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(f"TensorBoard logging ([log] tensorboard / --tensorboard) needs the "
                        f"optional tensorboard package: {INSTALL}") from None


def _tag(key: str) -> str:
    if key.startswith("val_"):
        return "val/" + key[4:]
    return "train/" + key


def write_tensorboard(logdir: Path, records: list[RunRecord]) -> list[Path]:
    """One event-file folder per finished run (replacing an earlier build's); returns them."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    written = []
    for r in records:
        if not r.ok or not r.curves:
            continue
        draw = f"-draw{r.draw}" if r.draw else ""  # a sweep's other settings
        run_dir = (Path(logdir) / r.strategy / (r.protocol or "protocol")
                   / f"fold{r.fold}-seed{r.seed}{draw}")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        with SummaryWriter(str(run_dir)) as writer:
            for row in r.curves:
                for key, value in row.scalars().items():
                    writer.add_scalar(_tag(key), float(value), row.epoch)
        written.append(run_dir)
    return written
