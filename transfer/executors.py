"""Executors: who runs the planned runs of a grid.

- ``local``, ``jobs = 1``: one after the other in this process.
- ``local``, ``jobs > 1``: that many worker processes (each loads the data and the pretrained
  model once, from the content-addressed caches the parent has already filled), on a GPU
  several runs share it; results are identical to running them one by one, since every run
  seeds itself.
- ``ray``: one Ray task per run with its CPU/GPU share (the optional ``ray`` extra).

Whoever runs them, the parent appends each finished run's record to ``runs.jsonl`` at once
(flushed and fsynced), so an interrupted grid loses no finished run.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from transfer import UserError
from transfer.cache import append_line
from transfer.cli import console
from transfer.progress import progress_bar


def default_jobs(device: torch.device) -> int:
    """Runs at once when the recipe says 0: a few per GPU, one on a small CPU."""
    if device.type == "cuda":
        return 4
    return max(1, (os.cpu_count() or 1) // 4)


def _record(path: Path, record: dict[str, Any]) -> None:
    package = record.pop("_model", None)
    if package is not None:  # written by the parent, whichever process trained the model
        from transfer.package import save_package

        rel = f"models/runs/{record['strategy']}-fold{record['fold']}-seed{record['seed']}.pt"
        save_package(package, path.parent / rel)
        record["model"] = rel
    append_line(path, json.dumps(record, default=float))
    if record["status"] != "ok":
        console.print(f"[red]run failed[/] {record['strategy']} fold {record['fold']} "
                      f"seed {record['seed']}: {record['error']}")


def execute_all(exp, todo: list, records_path: Path, *, progress: bool = True,
                jobs: int | None = None, executor: str = "local", address: str | None = None,
                out_dir: Path | None = None) -> None:
    if not todo:
        return
    if executor == "ray":
        from transfer.ray_executor import execute_ray

        execute_ray(exp, todo, records_path, address=address, progress=progress)
        return
    jobs = exp.recipe.jobs if jobs is None else jobs
    if jobs == 0:
        jobs = default_jobs(exp.device)
    if jobs < 0:
        raise UserError(f"--jobs must be 0 (auto) or positive, got {jobs}")
    if jobs == 1 or len(todo) == 1:
        _sequential(exp, todo, records_path, progress)
    else:
        _processes(exp, todo, records_path, progress, min(jobs, len(todo)))


def _sequential(exp, todo: list, records_path: Path, progress: bool) -> None:
    epochs = exp.recipe.train.epochs
    with progress_bar(progress) as bar:
        grid = bar.add_task("grid", total=len(todo))
        for spec in todo:
            label = f"{spec.strategy} fold {spec.fold} seed {spec.seed}"
            task = bar.add_task(label, total=epochs)

            def on_epoch(epoch: int, row: dict, task=task, label=label) -> None:
                uar = row.get("val_uar")
                desc = label if uar is None else f"{label} val UAR {uar:.3f}"
                bar.update(task, completed=epoch, description=desc)

            record = exp.execute(spec, on_epoch)
            bar.remove_task(task)
            _record(records_path, record)
            bar.advance(grid)


# --- worker processes ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(recipe, base, device: str, threads: int) -> None:
    from transfer.run import Experiment

    exp = Experiment(recipe, base=base, progress=False, device=torch.device(device)).load()
    exp.threads = threads  # the parent's: identical numerics to running one by one
    _WORKER["exp"] = exp


def _work(spec) -> dict[str, Any]:
    return _WORKER["exp"].execute(spec)


def _processes(exp, todo: list, records_path: Path, progress: bool, jobs: int) -> None:
    threads = exp.threads
    ctx = get_context("spawn")
    with progress_bar(progress) as bar, ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_worker,
            initargs=(exp.recipe, exp.base, str(exp.device), threads)) as pool:
        grid = bar.add_task(f"grid ({jobs} at once)", total=len(todo))
        pending = {pool.submit(_work, spec) for spec in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    _record(records_path, fut.result())
                    bar.advance(grid)
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            raise
