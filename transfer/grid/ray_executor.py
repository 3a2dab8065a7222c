"""Run a grid on Ray: one task per pack of runs, each with its CPU/GPU share (on CPUs, packs
that do not divide evenly among the cluster's CPUs are split: ``Experiment.schedule``).

The prepared experiment (features, labels, subjects, splits, the source-pretrained model) is
put in Ray's object store once by the driver; tasks never recompute it, so a cluster needs no
shared file system. Every run seeds itself, so results match the local executor.
``ray`` is an optional extra: ``pip install -e ".[ray]"`` in a checkout (:data:`INSTALL`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer import UserError
from transfer.common.progress import progress_bar
from transfer.grid.records import RunResult, write_record

_EXPERIMENTS: dict[str, Any] = {}  # per worker process: the experiment of a grid, kept once

#: How to install Ray: the ``ray`` extra of a checkout, or the package itself (the toolkit is
#: not on PyPI, so ``pip install 'ser-transfer[ray]'`` would not find it).
INSTALL = 'pip install -e ".[ray]" (in the ser-transfer checkout) or pip install "ray>=2.9"'


def require_ray() -> None:
    """A one-line error now, before any data is read or model pretrained, when Ray is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None


def _run(key: str, experiment: Any, pack: list) -> list[RunResult]:
    """One Ray task: run ``pack`` on the grid's experiment (kept once per worker process)."""
    if key not in _EXPERIMENTS:
        _EXPERIMENTS.clear()
        _EXPERIMENTS[key] = experiment
    return _EXPERIMENTS[key].execute_pack(pack)


def execute_ray(exp, packs: list[list], records_path: Path, *, address: str | None = None,
                progress: bool = True, cpus_per_task: int = 1) -> None:
    """Run ``packs`` as Ray tasks (one GPU per task on a GPU: a pack fills it)."""
    require_ray()
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    gpu = exp.device.type == "cuda"
    task = ray.remote(num_cpus=cpus_per_task, num_gpus=1 if gpu else 0)(_run)
    # as many packs as the cluster has task slots, costliest first (on CPUs, the ones that do
    # not divide evenly among the slots split, so that no CPU idles while others finish)
    per_task = 1 if gpu else cpus_per_task
    slots = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)) // per_task
    packs = exp.schedule(packs, max(1, slots))
    shared = ray.put(exp.for_worker())
    key = records_path.as_posix()
    pending = {task.remote(key, shared, pack): pack for pack in packs}
    with progress_bar(progress) as bar:
        grid = bar.add_task("grid (ray)", total=sum(len(p) for p in packs))
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pack = pending.pop(ref)
                    try:
                        results = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a lost worker fails its pack
                        results = exp.failed_records(pack, f"ray: {err}")
                    for res in results:
                        write_record(records_path, res.record, res.package)
                    bar.advance(grid, len(pack))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise
