"""Run a grid on Ray: one task per run, each with its CPU/GPU share.

The loaded domains (features, labels, subjects), the splits and the source-pretrained model
are put in Ray's object store once by the driver; tasks never recompute them, so a cluster
needs no shared file system. Every run seeds itself, so results match the local executor.
``ray`` is an optional extra: ``pip install 'ser-transfer[ray]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer import UserError
from transfer.progress import progress_bar

_EXPERIMENTS: dict[str, Any] = {}  # per worker process: the experiment of a grid, built once


def _experiment(shared: dict[str, Any]):
    import torch

    from transfer.run import Experiment

    key = shared["key"]
    if key not in _EXPERIMENTS:
        exp = Experiment(shared["recipe"], base=shared["base"], progress=False,
                         device=torch.device(shared["device"]))
        exp.target, exp.source = shared["target"], shared["source"]
        exp.pretrained, exp.splits = shared["pretrained"], shared["splits"]
        exp.threads = shared["threads"]
        _EXPERIMENTS.clear()
        _EXPERIMENTS[key] = exp
    return _EXPERIMENTS[key]


def _run(shared: dict[str, Any], spec) -> dict[str, Any]:
    return _experiment(shared).execute(spec)


def execute_ray(exp, todo: list, records_path: Path, *, address: str | None = None,
                progress: bool = True, cpus_per_run: int = 1, runs_per_gpu: int = 4) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ser-transfer[ray]'") from None
    from transfer.executors import _record

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    gpu = exp.device.type == "cuda"
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=1 / runs_per_gpu if gpu else 0)(_run)
    shared = ray.put({"key": records_path.as_posix(), "recipe": exp.recipe, "base": exp.base,
                      "device": exp.device.type, "target": exp.target, "source": exp.source,
                      "pretrained": exp.pretrained, "splits": exp.splits,
                      "threads": exp.threads})
    pending = {task.remote(shared, spec): spec for spec in todo}
    with progress_bar(progress) as bar:
        grid = bar.add_task("grid (ray)", total=len(todo))
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    spec = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a lost worker fails one run
                        record = {"key": spec.key, "strategy": spec.strategy, "fold": spec.fold,
                                  "seed": spec.seed, "status": "failed",
                                  "protocol": spec.protocol or exp.recipe.protocol.name,
                                  "speaker_dependent": False, "error": f"ray: {err}"}
                    _record(records_path, record)
                    bar.advance(grid)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise
