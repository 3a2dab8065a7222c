"""Run a recipe: pretrain on the source, train every strategy on every fold x seed, compare.

``python -m transfer.run RECIPE.toml [--set key=value ...] [--results-dir DIR] [--dry-run]
[--resume RESULTS_DIR] [--jobs N] [--executor local|ray]``

Writes ``<results-dir>/<recipe name>/<timestamp>/``: ``recipe.json`` (resolved),
``environment.json``, ``runs.jsonl`` (one line per finished run, appended atomically),
``table.md``/``table.csv``, ``summary.json`` and ``figures/``; with ``protocol.compare`` (or
``--leak-report``) the compared protocols' runs too, and ``leak.md``/``leak.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any

from transfer import UserError
from transfer.common.cache import atomic_write_text
from transfer.common.config import Recipe
from transfer.common.console import console, main_guard
from transfer.evaluate.protocols import SPEAKER_DEPENDENT, protocols
from transfer.grid.experiment import Experiment, RunSpec, environment, export_best
from transfer.grid.recipe import load_recipe
from transfer.grid.records import (
    check_resume,
    check_writable,
    new_results_path,
    planned,
    read_records,
    results_folder,
)
from transfer.grid.sweep import space_table
from transfer.report.tables import latest, print_leak, print_table, write_outputs


def _print_dry_run(recipe: Recipe) -> None:
    print(json.dumps(recipe.to_dict(), indent=2, default=str))
    p = recipe.protocol
    draws = recipe.sweep.draws
    for name in protocols(p):
        folds = {"subject-kfold": str(p.folds), "segment-random": "1",
                 "loso": "one per target subject"}[name]
        swept = f" x {draws} draws" if draws > 1 and name == p.name else ""
        print(f"\nplanned runs: {len(recipe.strategies)} strategies{swept} x {folds} fold(s) x "
              f"{len(recipe.seeds)} seed(s), protocol {name}"
              + (" (speaker-dependent!)" if name in SPEAKER_DEPENDENT else ""))
    for e in recipe.strategies:
        print(f"  {e.label:<14} {e.name:<10} {dataclasses.asdict(e.options)}")
        if draws > 1:
            for field, space in space_table(e):
                print(f"  {'':<14} tunes {field}: {space}")


def run_recipe(recipe: Recipe, *, results_dir: Path, resume: Path | None = None,
               base: Path | None = None, progress: bool = True, jobs: int | None = None,
               executor: str = "local", address: str | None = None) -> tuple[Path, Any, int]:
    """Run (or resume) a recipe. Returns (output dir, table, number of failed runs).

    Everything that can be checked is checked before the results folder is made (a resumed
    folder's recipe, writability, data, the plan), and a new folder is removed again if the
    run fails before its first record.
    """
    if jobs is not None and jobs < 0:
        raise UserError(f"--jobs must be 0 (auto) or positive, got {jobs}")
    if resume is not None:
        out = resume
        check_resume(out, recipe.to_dict())
    else:
        out = new_results_path(results_dir, recipe.name, dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
        check_writable(out)
    exp = Experiment(recipe, base=base, progress=progress).load()
    plan = exp.plan()
    with results_folder(out, new=resume is None):
        if resume is None:  # a resumed folder keeps the recipe it was started with
            atomic_write_text(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2,
                                                              default=str))
        atomic_write_text(out / "environment.json", json.dumps(environment(exp.device), indent=2))
        return _run_plan(exp, plan, out, progress=progress, jobs=jobs, executor=executor,
                         address=address)


def _run_plan(exp: Experiment, plan: list[RunSpec], out: Path, **how: Any) -> tuple[Path, Any, int]:
    recipe = exp.recipe
    records_path = out / "runs.jsonl"
    keys = {s.key for s in plan}
    done = {r["key"] for r in planned(read_records(records_path), keys) if r["status"] == "ok"}
    todo = [s for s in plan if s.key not in done]
    if done:
        console.print(f"resuming {out}: {len(plan) - len(todo)} of {len(plan)} runs already "
                      "recorded")
    summary = _summary(exp, plan)
    source = summary["source"]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    from transfer.grid.executors import execute_all

    try:
        execute_all(exp, todo, records_path, out_dir=out, **how)
    finally:  # also on Ctrl-C: the table of what finished (of this plan's runs only)
        records = planned(read_records(records_path), keys)
        table = write_outputs(out, records, summary["order"], source, summary["title"],
                              protocol=recipe.protocol.name, spaces=summary.get("spaces"))
        if recipe.export:
            for path in export_best(out, latest(records), summary["order"]):
                console.print(f"exported {path}")
    failed = sum(1 for r in latest(records) if r["status"] != "ok" and not _bad_draw(r))
    return out, table, failed


def _summary(exp: Experiment, plan: list[RunSpec]) -> dict[str, Any]:
    """What ``summary.json`` says of a run: title, strategy order, source scores, the plan's
    size, device, protocols, decision unit and, for a sweep, every strategy's search space."""
    recipe = exp.recipe
    summary = {"title": f"{recipe.name}: {exp.source.name if exp.source else '-'} -> "
                        f"{exp.target.name} ({recipe.protocol.name})",
               "order": exp.row_labels(),  # with test-time adaptation variants
               "source": dict(exp.pretrained.metrics) if exp.pretrained else None,
               "runs_planned": len(plan), "device": str(exp.device),
               "protocol": recipe.protocol.name, "compare": list(recipe.protocol.compare),
               "unit": exp.target.unit}
    if recipe.sweep.draws > 1:
        summary["spaces"] = {e.label: space_table(e) for e in recipe.strategies}
    return summary


def _bad_draw(record: dict) -> bool:
    """A sweep draw (not the recipe's settings) that diverged: a bad setting, which selection
    passes over, not a failure of the grid."""
    return bool(record.get("draw")) and "diverged" in record.get("error", "")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe TOML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (dotted names, e.g. train.epochs=5)")
    parser.add_argument("--results-dir", default="results", help="where results go")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and plan")
    parser.add_argument("--resume", metavar="RESULTS_DIR", help="finish an interrupted run")
    parser.add_argument("--jobs", type=int, help="runs at once (default: recipe 'jobs')")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--address", help="Ray cluster address (with --executor ray)")
    parser.add_argument("--export", action="store_true", help="export the best model of each "
                        "strategy as a model package")
    parser.add_argument("--leak-report", action="store_true", help="also run the speaker-"
                        "leaky segment-random protocol and write leak.md (protocol.compare)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # a killed grid ends like Ctrl-C: records kept
    recipe = load_recipe(args.recipe, args.set)
    if args.leak_report and "segment-random" not in recipe.protocol.compare:
        recipe.protocol.compare.append("segment-random")
    protocols(recipe.protocol)  # a bad compare list is an error before any work
    if args.dry_run:
        _print_dry_run(recipe)
        return 0
    if args.export:
        recipe.export = True
    out, table, failed = run_recipe(
        recipe, results_dir=Path(args.results_dir),
        resume=Path(args.resume) if args.resume else None, base=Path(args.recipe).parent,
        progress=not args.quiet, jobs=args.jobs, executor=args.executor, address=args.address)
    print_table(table, f"{recipe.name} ({recipe.protocol.name})")
    print_leak(out)
    console.print(f"results: {out}")
    if failed:
        console.print(f"[red]{failed} run(s) failed[/]: see 'error' in {out / 'runs.jsonl'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
