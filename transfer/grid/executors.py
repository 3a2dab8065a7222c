"""Executors: who runs the planned runs of a grid.

The unit of work is a pack: the runs of one strategy entry (folds x seeds) trained together as
one model (see :mod:`transfer.train.engine`); ``train.pack = 1`` makes every run its own pack.

- ``local``, ``jobs = 1``: one pack after the other in this process.
- ``local``, ``jobs > 1``: that many worker processes (each loads the data and the pretrained
  model once, from the content-addressed caches the parent has already filled), one pack per
  task, the costliest first; on a CPU, when the packs do not divide evenly among the
  workers, the last ones are split so that no worker idles at the end
  (``Experiment.schedule``). Results are identical to running them one by one, since every
  run seeds itself and gives the same result in a pack of any size.
- ``ray``: one Ray task per pack with its CPU/GPU share (the optional ``ray`` extra).

Whoever runs them, the parent appends each finished run's record to ``runs.jsonl`` at once
(flushed and fsynced), so an interrupted grid loses no finished pack.

This module runs units of work handed to it; it never imports the module that plans a grid
(:mod:`transfer.run`), so the two cannot import each other.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from transfer import UserError
from transfer.common.lifeline import die_with_parent
from transfer.common.progress import progress_bar
from transfer.grid.records import RunResult, write_record


def default_jobs(device: torch.device, threads: int = 1) -> int:
    """Worker processes when the recipe says 0: one per GPU (packs fill it); on a CPU, one per
    core for runs of ``threads`` threads each (the recipe's ``threads``, 1 by default)."""
    if device.type == "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, threads))


def _pack_label(pack: list) -> str:
    first = pack[0]
    draws = len({getattr(s, "draw", 0) for s in pack})
    if len(pack) == 1:
        return (f"{first.strategy} fold {first.fold} seed {first.seed}"
                + (f" draw {first.draw}" if getattr(first, "draw", 0) else ""))
    return f"{first.strategy} ({len(pack)} runs packed" + (f", {draws} draws)" if draws > 1
                                                           else ")")


def _grid_label(exp: Any, jobs: int = 1) -> str:
    draws = exp.recipe.sweep.draws
    return ("grid" + (f" ({draws} draws per strategy x fold x seed)" if draws > 1 else "")
            + (f" ({jobs} at once)" if jobs > 1 else ""))


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
    if jobs > 1:
        packs = exp.schedule(packs, jobs)
    if jobs == 1 or len(packs) == 1:
        _sequential(exp, packs, records_path, progress)
    else:
        _processes(exp, packs, records_path, progress, min(jobs, len(packs)))


def _sequential(exp, packs: list[list], records_path: Path, progress: bool) -> None:
    epochs = exp.recipe.train.epochs
    with progress_bar(progress) as bar:
        grid = bar.add_task(_grid_label(exp), total=sum(len(p) for p in packs))
        for pack in packs:
            label = _pack_label(pack)
            task = bar.add_task(label, total=epochs)

            def on_epoch(epoch: int, rows: list, task=task, label=label) -> None:
                uars = [r["val_uar"] for r in rows if r is not None and "val_uar" in r]
                desc = label if not uars else f"{label} val UAR {sum(uars) / len(uars):.3f}"
                bar.update(task, completed=epoch, description=desc)

            results = exp.execute_pack(pack, on_epoch)
            bar.remove_task(task)
            for res in results:
                write_record(records_path, res.record, res.package)
            bar.advance(grid, len(pack))


# --- worker processes ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(experiment: Any, threads: int, parent: int) -> None:
    die_with_parent(parent)  # a killed grid leaves no idle worker behind
    experiment.threads = threads  # the parent's: identical numerics to running one by one
    _WORKER["exp"] = experiment


def _work(pack: list) -> list[RunResult]:
    """Run one pack in a worker process; its results are pickled back to the parent."""
    return _WORKER["exp"].execute_pack(pack)


def _processes(exp, packs: list[list], records_path: Path, progress: bool, jobs: int) -> None:
    ctx = get_context("spawn")
    shipped = exp.for_worker()
    with progress_bar(progress) as bar, ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_worker,
            initargs=(shipped, exp.threads, os.getpid())) as pool:
        grid = bar.add_task(_grid_label(exp, jobs), total=sum(len(p) for p in packs))
        pending = {pool.submit(_work, pack): pack for pack in packs}
        try:
            while pending:
                finished, _ = wait(set(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    pack = pending.pop(fut)
                    for res in fut.result():
                        write_record(records_path, res.record, res.package)
                    bar.advance(grid, len(pack))
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            raise
