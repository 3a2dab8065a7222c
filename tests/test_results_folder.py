"""Reliability round two (issue 28), the results folder: no two writers, no record of other data,
no table of other runs, no lost export, no orphaned worker, and what a folder says about how its
table was made. Tiny data; seconds per test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line, tiny_recipe

import transfer.grid.executors
from transfer import REPO_ROOT, UserError
from transfer.grid.recipe import load_recipe
from transfer.grid.records import read_records
from transfer.report.tables import main as report_main
from transfer.run import main, run_recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, results folder) of one finished tiny grid, exported (scratch, 2 folds);
    tests that change a folder work on a copy."""
    tmp = tmp_path_factory.mktemp("finished")
    path = tiny_recipe(tmp / "r.toml", ["scratch"])
    out, _, failed = run_recipe(load_recipe(path, ["export=true"]), results_dir=tmp / "res",
                                progress=False)
    assert failed == 0 and len(read_records(out / "runs.jsonl")) == 2
    return path, out


def _copy(out: Path, dest: Path) -> Path:
    shutil.copytree(out, dest / out.name)
    return dest / out.name


def _drop_last_record(out: Path) -> dict:
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text(lines[0] + "\n")
    return json.loads(lines[1])


# --- case 1: one folder, one writer ------------------------------------------------------------

def test_two_runs_that_pick_the_same_folder_get_two(tmp_path, monkeypatch):
    """Two runs started in the same second both choose <name>/<stamp> before either creates
    it; each must get a folder of its own (before: the second wrote into the first's)."""
    import transfer.run

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    stamp = tmp_path / "res" / "tiny" / "20260101-000000"
    monkeypatch.setattr(transfer.run, "new_results_path", lambda *a: stamp)  # the race
    first, _, _ = run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    second, _, _ = run_recipe(load_recipe(path, ["train.epochs=3"]),
                              results_dir=tmp_path / "res", progress=False)
    assert first == stamp and second == stamp.with_name(stamp.name + "-1")
    for out, epochs in ((first, 2), (second, 3)):
        assert json.loads((out / "recipe.json").read_text())["train"]["epochs"] == epochs
        assert len(read_records(out / "runs.jsonl")) == 2


def test_second_writer_of_a_results_folder_is_refused(finished, tmp_path, monkeypatch, capsys):
    """Two --resume of one folder: the second is one line naming the folder, and no run is
    recorded twice (before: both redid the missing run)."""
    path, original = finished
    out = _copy(original, tmp_path)
    _drop_last_record(out)
    real = transfer.grid.executors.execute_all
    started, release = threading.Event(), threading.Event()

    def first_waits(*args, **kw):  # the first resume holds the folder while it trains
        if not started.is_set():
            started.set()
            assert release.wait(120)
        return real(*args, **kw)

    monkeypatch.setattr(transfer.grid.executors, "execute_all", first_waits)
    recipe = load_recipe(path, ["export=true"])
    first = threading.Thread(target=run_recipe, args=(recipe,),
                             kwargs={"results_dir": tmp_path, "resume": out, "progress": False})
    first.start()
    try:
        assert started.wait(120)
        code = main([str(path), "--quiet", "--resume", str(out)])
    finally:
        release.set()
        first.join(120)
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]  # one line
    assert code == 2 and f"{out} is in use by another run (process {os.getpid()})" in line
    keys = [r.key for r in read_records(out / "runs.jsonl")]
    assert len(keys) == 2 and len(set(keys)) == 2


# --- cases 2 and 3: a record depends on all the data; the table on the plan --------------------

def test_run_keys_depend_on_source_data_and_pretrained_weights():
    from transfer import Domain, Experiment, parse_recipe
    from transfer.train.pretrain import Pretrained

    rng = np.random.default_rng(0)
    speakers = np.repeat([f"s{i}" for i in range(6)], 2)
    target = Domain.from_arrays(rng.normal(size=(12, 3, 8)), np.repeat(np.arange(6) % 2, 2),
                                speakers, labels=["hc", "mdd"], positive="mdd")

    def keys(source_shift: float, weight: float) -> list[str]:
        source = Domain.from_arrays(np.full((12, 3, 8), source_shift),
                                    np.repeat(np.arange(6) % 3, 2), speakers)
        recipe = parse_recipe({"target": {"corpus": "arrays"}, "source": {"corpus": "arrays"},
                               "seeds": [0], "strategies": [{"name": "scratch"},
                                                            {"name": "freeze"}]})
        pretrained = Pretrained({"w": torch.full((2,), weight)}, {}, "key", True)
        from transfer.evaluate.protocols import Split

        split = Split(0, 0, np.arange(8), np.arange(8, 10), np.arange(10, 12))
        exp = Experiment.from_domains(recipe, target, source, pretrained, [split])
        return [s.key for s in exp.plan()]

    base = keys(0.0, 1.0)
    other_source = keys(1.0, 1.0)
    other_weights = keys(0.0, 2.0)
    assert base[0] != other_source[0] and base[1] != other_source[1]  # the source data
    assert base[0] == other_weights[0] and base[1] != other_weights[1]  # freeze: the weights


def test_resume_after_the_source_corpus_changed_is_refused(tiny_casia, tmp_path, monkeypatch):
    """The source root comes from $CASIA_ROOT: the same recipe on other source audio must not
    mix its runs with those recorded (before: 'N of M runs already recorded', no word)."""
    from transfer.data.synth import make_casia

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_casia, a)
    make_casia(b, "tiny", seed=1)  # another copy of the corpus, other recordings
    path = tiny_recipe(tmp_path / "r.toml", ["freeze"])
    path.write_text(path.read_text().replace('corpus = "casia"\nsynthetic = "tiny"',
                                             'corpus = "casia"'))
    monkeypatch.setenv("CASIA_ROOT", str(a))
    out, _, _ = run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    _drop_last_record(out)
    monkeypatch.setenv("CASIA_ROOT", str(b))
    with pytest.raises(UserError, match="recorded on other data.*the source corpus changed"):
        run_recipe(load_recipe(path), results_dir=tmp_path / "res", resume=out, progress=False)
    assert len(read_records(out / "runs.jsonl")) == 1


def test_resume_after_a_target_file_changed_is_refused(tiny_modma, tmp_path):
    """A touched recording changes the data the runs were trained on (before: every run was
    redone without a word, and the table then counted old and new records together)."""
    root = tmp_path / "modma"
    shutil.copytree(tiny_modma, root)
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    path.write_text(path.read_text().replace('corpus = "modma"\nsynthetic = "tiny"',
                                             f'corpus = "modma"\nroot = "{root}"'))
    out, _, _ = run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    _drop_last_record(out)
    wav = next(root.glob("*/*.wav"))
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # touch
    with pytest.raises(UserError, match="recorded on other data.*the target corpus changed"):
        run_recipe(load_recipe(path), results_dir=tmp_path / "res", resume=out, progress=False)
    assert len(read_records(out / "runs.jsonl")) == 1


def test_report_builds_only_from_the_plans_runs(finished, tmp_path, capsys):
    _, original = finished
    out = _copy(original, tmp_path)
    record = read_records(out / "runs.jsonl")[0]
    with open(out / "runs.jsonl", "a") as fh:  # a run of other data in the same folder
        fh.write(json.dumps({**record.to_dict(), "key": "other-data"}) + "\n")
    assert report_main([str(out), "--no-plots"]) == 0
    assert list(pd.read_csv(out / "table.csv")["runs"]) == [2]  # not 3


# --- cases 4 and 5: exports ----------------------------------------------------------------------

def test_resume_with_export_needs_the_models_of_recorded_runs(tmp_path, capsys):
    """--export on a folder whose runs were trained without it: one line (before: exit 0 and
    no models/, or the best model of the resumed runs only)."""
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    out, _, _ = run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    args = [str(path), "--quiet", "--resume", str(out), "--export"]
    assert main(args) == 2
    assert "were trained without --export" in one_line(capsys.readouterr().err)
    _drop_last_record(out)
    assert main(args) == 2 and not (out / "models").exists()
    capsys.readouterr()


def test_resumed_export_run_exports_every_run(finished, tmp_path):
    """A run started with --export and resumed without it goes on exporting (before: the
    resumed runs had no model and models/<strategy>.pt was chosen among the others only)."""
    path, original = finished
    out = _copy(original, tmp_path)
    lost = _drop_last_record(out)
    (out / lost["model"]).unlink()
    (out / "models" / "scratch.pt").unlink()
    run_recipe(load_recipe(path), results_dir=tmp_path, resume=out, progress=False)
    records = read_records(out / "runs.jsonl")
    assert all((out / r.model).is_file() for r in records) and len(records) == 2
    assert (out / "models" / "scratch.pt").is_file()


def test_interrupted_export_leaves_no_partial_package(finished, tmp_path, monkeypatch):
    """SIGTERM (here: KeyboardInterrupt) in the middle of copying models/scratch.pt (before:
    a partial file of 0-8.5 of 15.5 MB stayed, while the console said work was kept)."""
    from transfer.grid.experiment import export_best
    from transfer.report.tables import latest

    _, original = finished
    out = _copy(original, tmp_path)
    (out / "models" / "scratch.pt").unlink()
    real = shutil.copyfile

    def interrupted(src, dst, **kw):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_best(out, latest(read_records(out / "runs.jsonl")), ["scratch"])
    monkeypatch.setattr(shutil, "copyfile", real)
    assert not (out / "models" / "scratch.pt").exists()
    assert not [p for p in (out / "models").iterdir() if p.is_file()]  # no temporary file


# --- case 10: smaller ones ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", ".."])
def test_recipe_name_must_be_one_folder_name(tmp_path, capsys, name):
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--dry-run", "--set", f"name={json.dumps(name)}"]) == 2
    assert "recipe key 'name' must be a folder name" in one_line(capsys.readouterr().err)


def test_address_needs_the_ray_executor(tmp_path, capsys):
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--dry-run", "--address", "ray://head:10001"]) == 2
    assert "--address is the address of a Ray cluster: it needs --executor ray" in one_line(
        capsys.readouterr().err)


@pytest.mark.parametrize("change, message", [
    ({"order": "scratch"}, "'order' must be list, got 'scratch'"),
    ({"order": [1, 2]}, "'order' must be a list of strings"),
    ({"source": 3}, "'source' must be dict or NoneType"),
])
def test_tampered_summary_is_one_line_in_report(finished, tmp_path, capsys, change, message):
    """(before: order = "scratch" gave the rows s, c, r, a, t, c, h with exit 0)."""
    _, original = finished
    out = _copy(original, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, **change}))
    assert report_main([str(out), "--no-plots"]) == 2
    assert message in one_line(capsys.readouterr().err)


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended (a container's PID 1 may never reap it)


PARENT = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
import os
from transfer.common.lifeline import die_with_parent
if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    for f in [pool.submit(time.sleep, 0.01) for _ in range(4)]:
        f.result()
    print("ready", flush=True)
    time.sleep(600)  # idle workers, as between the packs of a grid
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_with_a_killed_parent(tmp_path):
    """kill -9 of a parent with a pool of workers, as ``--jobs 2`` and feature extraction
    start them (before: the grid's ~410 MB workers idled for ever under PID 1)."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    workers: set[int] = set()
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        workers = {p for p in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}
        assert len(workers) == 2
        proc.kill()  # SIGKILL: no handler of the parent runs
        proc.wait(30)
        deadline = time.time() + 30
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
    finally:
        proc.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_grid_and_feature_workers_are_started_to_end_with_their_parent(monkeypatch):
    """The pools of ``--jobs N`` and of feature extraction run :func:`die_with_parent`."""
    import transfer.common.lifeline
    import transfer.data.features

    calls = []
    monkeypatch.setattr(transfer.grid.executors, "die_with_parent", calls.append)
    transfer.grid.executors._init_worker(types.SimpleNamespace(), 1, os.getpid())
    assert calls == [os.getpid()]

    class Pool:  # records how the feature pool is made, runs nothing in processes
        def __init__(self, workers, **kw):
            calls.append((kw["initializer"], kw["initargs"]))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, jobs):
            return []

    monkeypatch.setattr(transfer.data.features, "ProcessPoolExecutor", Pool)
    transfer.data.features._run_jobs([], 2, False, "t")
    assert calls[1] == (transfer.common.lifeline.die_with_parent, (os.getpid(),))


# --- case 11: how the table was made ---------------------------------------------------------------

def test_environment_records_precision_and_cpu_model(finished, monkeypatch):
    import transfer.train.device
    from transfer.grid.experiment import environment
    from transfer.train.device import amp_enabled

    _, out = finished
    env = json.loads((out / "environment.json").read_text())
    used = "bf16 autocast (fp32 weights)" if amp_enabled(torch.device("cpu"), True) else "fp32"
    assert env["precision"] == {"train": used} and env["cpu_model"]
    assert env["cpu_native_bf16"] == transfer.train.device.cpu_has_native_bf16()
    recipe = load_recipe(tiny_recipe(out.parent / "r.toml", ["scratch"]), ["train.amp=false"])
    monkeypatch.setattr(transfer.train.device, "cpu_has_native_bf16", lambda: True)  # AMX
    env = environment(torch.device("cpu"), recipe, pretrained=True)
    assert env["precision"] == {"train": "fp32", "pretrain": "bf16 autocast (fp32 weights)"}


# --- raw tracebacks of the results folder -------------------------------------------------------------

def test_record_without_metrics_is_skipped_by_report_and_redone_by_resume(finished, tmp_path,
                                                                          capsys):
    path, original = finished
    out = _copy(original, tmp_path)
    lost = _drop_last_record(out)
    del lost["metrics"]
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(lost) + "\n")
    assert report_main([str(out), "--no-plots"]) == 0
    assert "line 2 is not a run record (it lacks 'metrics'); ignored" in capsys.readouterr().err
    _, table, failed = run_recipe(load_recipe(path), results_dir=tmp_path, resume=out,
                                  progress=False)
    assert failed == 0 and list(table["runs"]) == [2]


def test_damaged_summary_is_one_line_in_report(finished, tmp_path, capsys):
    _, original = finished
    out = _copy(original, tmp_path)
    (out / "summary.json").write_text('{"order": ["scr')
    assert report_main([str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "summary.json is damaged (JSONDecodeError" in line and f"--resume {out}" in line


def test_runs_jsonl_that_is_a_folder_is_refused_before_training(finished, tmp_path, monkeypatch,
                                                                capsys):
    path, original = finished
    out = _copy(original, tmp_path)
    (out / "runs.jsonl").unlink()
    (out / "runs.jsonl").mkdir()

    def no_training(*args, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(transfer.grid.executors, "execute_all", no_training)
    assert main([str(path), "--quiet", "--resume", str(out)]) == 2
    assert f"{out / 'runs.jsonl'} is not a file" in one_line(capsys.readouterr().err)


def test_missing_ray_is_reported_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    from transfer.grid.experiment import Experiment

    def no_data(*args, **kw):
        raise AssertionError("data read before Ray was looked for")

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    monkeypatch.setattr(Experiment, "load", no_data)
    monkeypatch.setattr(Experiment, "load_data", no_data, raising=False)
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--quiet", "--executor", "ray"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--executor ray needs Ray" in line and 'pip install -e ".[ray]"' in line
