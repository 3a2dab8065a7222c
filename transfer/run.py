"""Run a recipe: pretrain on the source, train every strategy on every fold x seed, compare.

``python -m transfer.run RECIPE.toml [--set key=value ...] [--results-dir DIR] [--dry-run]
[--resume RESULTS_DIR] [--jobs N] [--executor local|ray]``

Writes ``<results-dir>/<recipe name>/<timestamp>/``: ``recipe.json`` (resolved),
``environment.json``, ``runs.jsonl`` (one line per finished run, appended atomically),
``table.md``/``table.csv``, ``summary.json``, ``figures/`` and ``report.html`` (every table,
figure, the recipe and environment on one self-contained page; with operating points,
calibration and subgroups, ``*.csv`` of each, and EmoBox-style ``predictions/``); with
``protocol.compare`` (or ``--leak-report``) the compared protocols' runs too, and
``leak.md``/``leak.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import signal
from pathlib import Path
from typing import Any

from transfer import UserError
from transfer.common.cache import atomic_write_text
from transfer.common.config import Recipe
from transfer.common.console import console, main_guard, say
from transfer.data.domain import check_corpus
from transfer.evaluate.protocols import SPEAKER_DEPENDENT, protocols
from transfer.grid.experiment import (
    Experiment,
    RunSpec,
    cpu_model,
    environment,
    export_best,
    precision,
)
from transfer.grid.folder import (
    check_resume,
    check_writable,
    folder_lock,
    new_results_path,
    read_summary,
    results_folder,
)
from transfer.grid.recipe import load_recipe
from transfer.grid.records import RunRecord, planned, read_records
from transfer.grid.sweep import space_table
from transfer.report.tables import latest, print_leak, print_table, write_outputs
from transfer.report.tensorboard import require_tensorboard


def tensorboard_dir(recipe: Recipe, out: Path) -> Path | None:
    """Where the runs' TensorBoard event files go (None: not asked for)."""
    if not recipe.log.tensorboard:
        return None
    return Path(recipe.log.tensorboard_dir) if recipe.log.tensorboard_dir else out / "tensorboard"

log = logging.getLogger("transfer.run")


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
    adapted = [a for a in recipe.evaluate.adapt if a != "none"]
    if adapted:  # extra table rows, one training: each variant only changes the evaluation
        print(f"test-time adaptation of every trained model: {', '.join(adapted)} "
              f"(per {recipe.evaluate.per}); one table row each, the training shared")
    if not recipe.target.labelled:
        print("target labels hidden from training ([target] labelled = false): read only to "
              "score the test folds; the last epoch is kept")


def run_recipe(recipe: Recipe, *, results_dir: Path, resume: Path | None = None,
               base: Path | None = None, progress: bool = True, jobs: int | None = None,
               executor: str = "local", address: str | None = None) -> tuple[Path, Any, int]:
    """Run (or resume) a recipe. Returns (output dir, table, number of failed runs).

    Everything that can be checked is checked before the results folder is made (a resumed
    folder's recipe and data, writability, the executor, the plan), and a new folder is
    removed again if the run fails before its first record. A new folder is created
    exclusively; a folder is locked while this run writes to it (a second ``--resume`` of it
    is refused).
    """
    if jobs is not None and jobs < 0:
        raise UserError(f"--jobs must be 0 (auto) or positive, got {jobs}")
    if address and executor != "ray":
        raise UserError("--address is the address of a Ray cluster: it needs --executor ray")
    if executor == "ray":  # before any data is read or model pretrained
        from transfer.grid.ray_executor import require_ray

        require_ray()
    if recipe.log.tensorboard:  # a missing optional package is an error now, not after hours
        require_tensorboard()
    with contextlib.ExitStack() as stack:
        if resume is not None:
            out = resume
            recorded = check_resume(out, recipe.to_dict())
            stack.enter_context(folder_lock(out))
            recipe.export = recipe.export or bool(recorded.get("export"))  # as it was started
        else:
            out = new_results_path(results_dir, recipe.name,
                                   dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
            check_writable(out)
        exp = Experiment(recipe, base=base, progress=progress).load_data()
        if resume is not None:  # the corpora before pretraining, the pretrained model after
            recorded_data = _recorded_data(out)
            check_resumed_data(out, recorded_data, exp.data_identity(), ("target", "source"))
            exp.load()
            check_resumed_data(out, recorded_data, exp.data_identity(), ("pretrained",))
        else:
            exp.load()
        plan = exp.plan()
        if resume is not None:
            check_resumed_export(out, recipe, {s.key for s in plan})
        _note_precision(exp)
        with results_folder(out, new=resume is None) as out:
            if resume is None:  # a resumed folder keeps the recipe it was started with
                atomic_write_text(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2,
                                                                  default=str))
            env = environment(exp.device, recipe, pretrained=exp.pretrained is not None)
            atomic_write_text(out / "environment.json", json.dumps(env, indent=2))
            return _run_plan(exp, plan, out, progress=progress, jobs=jobs, executor=executor,
                             address=address)


def _recorded_data(out: Path) -> dict[str, Any]:
    """What the runs of ``out`` were trained on, as its summary.json says ({} where it does
    not: a folder of an older version, or a damaged summary, which is rewritten)."""
    try:
        return read_summary(out).get("data", {})
    except UserError as err:
        log.warning(f"warning: {err}; it is rewritten now")
        return {}


def check_resumed_data(out: Path, recorded: dict[str, Any], identity: dict[str, Any],
                       parts: tuple[str, ...]) -> None:
    """Refuse to resume ``out`` when its runs were trained on other data than the current
    recipe reads (``recorded`` vs ``identity``, in ``parts``): another target or source
    corpus (files added, removed, changed in size or modification time) or another
    source-pretrained model. Folders of older versions, whose summary does not say, are
    resumed; their run keys hold the target data."""
    if not recorded:
        return
    what = {"target": "the target corpus changed (files added, removed, or changed in size or "
                      "modification time)",
            "source": "the source corpus changed (files added, removed, or changed in size or "
                      "modification time)",
            "pretrained": "the source-pretrained model has other weights (retrained: another "
                          "machine, torch version or a cleared cache)"}
    changed = [what[name] for name in parts if recorded.get(name) != identity.get(name)]
    if changed:
        raise UserError(f"--resume: {out} was recorded on other data, so its runs cannot be "
                        f"mixed with new ones: {'; '.join(changed)}. Restore that data to "
                        "finish that run, or start a new one without --resume")


def check_resumed_export(out: Path, recipe: Recipe, keys: set[str]) -> None:
    """``--export`` on a resumed folder needs the model of every run already recorded: models
    are kept while a run trains, so runs recorded without ``--export`` cannot be exported."""
    if not recipe.export:
        return
    done = [r for r in planned(read_records(out / "runs.jsonl"), keys) if r.ok]
    missing = [r for r in done if not r.model or not (out / r.model).is_file()]
    if missing:
        raise UserError(f"--export: {len(missing)} of the {len(done)} run(s) already recorded "
                        f"in {out} were trained without --export (or their models/runs/ "
                        "package is gone), so their models cannot be exported and the best "
                        "model per strategy could not be chosen among all runs; start a new "
                        "run with --export")


def _note_precision(exp: Experiment) -> None:
    """Say when training runs in bf16 (on CUDA, or on a CPU with native bf16, where
    ``amp = true`` turns it on): it changes results, and environment.json records it too."""
    r = exp.recipe
    bf16 = [name for name, cfg in (("pretraining", r.pretrain), ("training", r.train))
            if precision(exp.device, cfg.amp) != "fp32"
            and (name == "training" or exp.pretrained is not None)]
    if bf16:
        where = exp.device.type if exp.device.type == "cuda" else f"CPU with native bf16: {cpu_model()}"
        log.info(f"note: {' and '.join(bf16)} in bf16 autocast ({where}); train.amp = false / "
                 "pretrain.amp = false train in fp32")


def _run_plan(exp: Experiment, plan: list[RunSpec], out: Path, **how: Any) -> tuple[Path, Any, int]:
    recipe = exp.recipe
    records_path = out / "runs.jsonl"
    keys = {s.key for s in plan}
    everything = read_records(records_path)
    done = {r.key for r in planned(everything, keys) if r.ok}
    todo = [s for s in plan if s.key not in done]
    others = {r.key for r in everything} - keys
    if others:
        log.info(f"note: {len(others)} run(s) recorded in {records_path} are not runs of this "
                 "plan (recorded with another version); they are left out of the table")
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
                              protocol=recipe.protocol.name, report=recipe.report,
                              tensorboard=tensorboard_dir(recipe, out),
                              spaces=summary.get("spaces"))
        if recipe.export:
            for path in export_best(out, latest(records), summary["order"]):
                console.print(f"exported {path}")
    failed = sum(1 for r in latest(records) if not r.ok and not _bad_draw(r))
    return out, table, failed


def _summary(exp: Experiment, plan: list[RunSpec]) -> dict[str, Any]:
    """What ``summary.json`` says of a run: what ``transfer.report`` needs besides the records
    (title, strategy order, source scores, protocols, decision unit, positive class and, for a
    sweep, every strategy's search space), the plan's run keys (the table holds those runs
    only) and the data the runs are trained on (a resume checks it)."""
    recipe = exp.recipe
    summary = {"title": f"{recipe.name}: {exp.source.name if exp.source else '-'} -> "
                        f"{exp.target.name} ({recipe.protocol.name})",
               "order": exp.row_labels(),  # with test-time adaptation variants
               "source": dict(exp.pretrained.metrics) if exp.pretrained else None,
               "runs_planned": len(plan), "device": str(exp.device),
               "protocol": recipe.protocol.name, "compare": list(recipe.protocol.compare),
               "unit": exp.target.unit, "positive": exp.target.positive,
               "plan": [s.key for s in plan], "data": exp.data_identity()}
    if recipe.sweep.draws > 1:
        summary["spaces"] = {e.label: space_table(e) for e in recipe.strategies}
    return summary


def _bad_draw(record: RunRecord) -> bool:
    """A sweep draw (not the recipe's settings) that diverged: a bad setting, which selection
    passes over, not a failure of the grid."""
    return bool(record.draw) and "diverged" in record.error


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
    parser.add_argument("--tensorboard", metavar="DIR", help="write the runs' curves as "
                        "TensorBoard event files into DIR ([log] tensorboard; needs the "
                        "tensorboard extra)")
    args = parser.parse_args(argv)
    if args.address and args.executor != "ray":
        raise UserError("--address is the address of a Ray cluster: it needs --executor ray")
    signal.signal(signal.SIGTERM, _terminate)  # a killed grid ends like Ctrl-C: records kept
    recipe = load_recipe(args.recipe, args.set)
    if args.leak_report and "segment-random" not in recipe.protocol.compare:
        recipe.protocol.compare.append("segment-random")
    protocols(recipe.protocol)  # a bad compare list is an error before any work
    if args.dry_run:
        base = Path(args.recipe).parent
        for where, cfg in [("target", recipe.target)] + [("source", s) for s in recipe.source]:
            check_corpus(cfg, recipe.features, base, where)  # the cards, without audio
        _print_dry_run(recipe)
        return 0
    if args.export:
        recipe.export = True
    if args.tensorboard:
        recipe.log.tensorboard, recipe.log.tensorboard_dir = True, args.tensorboard
    out, table, failed = run_recipe(
        recipe, results_dir=Path(args.results_dir),
        resume=Path(args.resume) if args.resume else None, base=Path(args.recipe).parent,
        progress=not args.quiet, jobs=args.jobs, executor=args.executor, address=args.address)
    print_table(table, f"{recipe.name} ({recipe.protocol.name})")
    print_leak(out)
    console.print(f"results: {out}")
    if failed:
        say((f"{failed} run(s) failed", "red"), f": see 'error' in {out / 'runs.jsonl'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
