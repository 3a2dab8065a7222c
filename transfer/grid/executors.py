"""Executors: who runs the planned runs of a grid.

The unit of work is a pack: the runs of one strategy entry (folds x seeds) trained together as
one model (see :mod:`transfer.train.engine`); ``train.pack = 1`` makes every run its own pack.

- ``local``, ``jobs = 1``: one pack after the other in this process.
- ``local``, ``jobs > 1``: that many worker processes (each loads the data and the pretrained
  model once, from the content-addressed caches the parent has already filled), one pack per
  task, the costliest first; when the packs do not divide evenly among the workers, the last
  ones are split so that no worker idles at the end (:func:`spread`). Results are identical to
  running them one by one, since every run seeds itself and gives the same result in a pack
  of any size.
- ``ray``: one Ray task per pack with its CPU/GPU share (the optional ``ray`` extra).

Whoever runs them, the parent appends each finished run's record to ``runs.jsonl`` at once
(flushed and fsynced), so an interrupted grid loses no finished pack.

This module runs units of work handed to it; it never imports the module that plans a grid
(:mod:`transfer.run`), so the two cannot import each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer import UserError
from transfer.common.progress import progress_bar
from transfer.grid.records import write_record


def default_jobs(device: torch.device, threads: int = 1) -> int:
    """Worker processes when the recipe says 0: one per GPU (packs fill it); on a CPU, one per
    core for runs of ``threads`` threads each (the recipe's ``threads``, 1 by default)."""
    if device.type == "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, threads))


def _pack_label(pack: list) -> str:
    first = pack[0]
    if len(pack) == 1:
        return f"{first.strategy} fold {first.fold} seed {first.seed}"
    return f"{first.strategy} ({len(pack)} runs packed)"


def execute_all(exp, todo: list, records_path: Path, *, progress: bool = True,
                jobs: int | None = None, executor: str = "local", address: str | None = None,
                out_dir: Path | None = None) -> None:
    """Run the planned runs ``todo`` of the experiment ``exp`` and record them."""
    if not todo:
        return
    packs = exp.packs(todo)
    if executor == "ray":
        from transfer.grid.ray_executor import execute_ray

        execute_ray(exp, packs, records_path, address=address, progress=progress)
        return
    jobs = exp.recipe.jobs if jobs is None else jobs
    if jobs == 0:
        jobs = default_jobs(exp.device, exp.threads)
    if jobs < 0:
        raise UserError(f"--jobs must be 0 (auto) or positive, got {jobs}")
    if jobs > 1:  # on a GPU a pack fills the device: ordered, not split
        packs = spread(packs, jobs if exp.device.type == "cpu" else 1, exp.pack_cost)
    if jobs == 1 or len(packs) == 1:
        _sequential(exp, packs, records_path, progress)
    else:
        _processes(exp, packs, records_path, progress, min(jobs, len(packs)))


def spread(packs: list[list], jobs: int, cost: Callable[[list], float] = len) -> list[list]:
    """The packs in the order ``jobs`` workers should take them: costliest first (each worker
    takes the next when it is free), and the ``len(packs) % jobs`` cheapest split into ``jobs``
    parts each (as far as they have runs), so that the workers finish together instead of one
    training the last pack alone; a single pack on two cores runs as two halves at once.

    A run gives the same result in a pack of any size, so splitting changes no result; on a
    CPU a pack's throughput hardly depends on its size (2-core AMD EPYC, TIM-Net, fp32, one
    thread: 200-213 segment-steps/s for 4, 8 and 15 runs per pack), so a split costs only the
    per-pack set-up.
    """
    order = sorted(packs, key=cost, reverse=True)
    r = len(order) % jobs
    if r == 0:
        return order
    whole, tail = order[:len(order) - r], order[len(order) - r:]
    parts = [[pack[i] for i in idx] for pack in tail
             for idx in np.array_split(np.arange(len(pack)), min(jobs, len(pack)))]
    return whole + sorted(parts, key=cost, reverse=True)


def _sequential(exp, packs: list[list], records_path: Path, progress: bool) -> None:
    epochs = exp.recipe.train.epochs
    with progress_bar(progress) as bar:
        grid = bar.add_task("grid", total=sum(len(p) for p in packs))
        for pack in packs:
            label = _pack_label(pack)
            task = bar.add_task(label, total=epochs)

            def on_epoch(epoch: int, rows: list, task=task, label=label) -> None:
                uars = [r["val_uar"] for r in rows if r is not None and "val_uar" in r]
                desc = label if not uars else f"{label} val UAR {sum(uars) / len(uars):.3f}"
                bar.update(task, completed=epoch, description=desc)

            records = exp.execute_pack(pack, on_epoch)
            bar.remove_task(task)
            for record in records:
                write_record(records_path, record)
            bar.advance(grid, len(pack))


# --- worker processes ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(experiment: Any, threads: int) -> None:
    experiment.threads = threads  # the parent's: identical numerics to running one by one
    _WORKER["exp"] = experiment


def _work(pack: list) -> list[dict[str, Any]]:
    return _WORKER["exp"].execute_pack(pack)


def _processes(exp, packs: list[list], records_path: Path, progress: bool, jobs: int) -> None:
    ctx = get_context("spawn")
    shipped = exp.for_worker()
    with progress_bar(progress) as bar, ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_worker,
            initargs=(shipped, exp.threads)) as pool:
        grid = bar.add_task(f"grid ({jobs} at once)", total=sum(len(p) for p in packs))
        pending = {pool.submit(_work, pack): pack for pack in packs}
        try:
            while pending:
                finished, _ = wait(set(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    pack = pending.pop(fut)
                    for record in fut.result():
                        write_record(records_path, record)
                    bar.advance(grid, len(pack))
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            raise
