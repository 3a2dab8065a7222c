"""Grids survive interruption and failure; the Ray executor matches the local one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_recipe

from transfer.grid.recipe import load_recipe
from transfer.report.tables import read_records
from transfer.run import run_recipe
from transfer.train.strategies.scratch import Scratch

METRIC_COLS = ["unit_uar_mean", "unit_acc_mean", "segment_uar_mean", "segment_auc_mean",
               "gap_mmd_mean", "gap_a_distance_mean", "unit_uar_pooled", "unit_uar_ci_low",
               "unit_uar_ci_high", "vs_scratch_p"]


def _grid(tmp_path: Path, name: str = "grid") -> Path:
    return tiny_recipe(tmp_path / f"{name}.toml", ["scratch", "finetune"], name=name,
                       extra="").with_suffix(".toml")


def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "table.csv").set_index("strategy")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_killed_grid_resumes_and_matches_uninterrupted(tmp_path, sig):
    recipe = tiny_recipe(tmp_path / "r.toml", ["scratch", "finetune"], name="grid")
    text = recipe.read_text().replace("seeds = [0]", "seeds = [0, 1]").replace(
        "[train]\nepochs = 2", "[train]\nepochs = 6")
    recipe.write_text(text)
    reference, _, _ = run_recipe(load_recipe(recipe), results_dir=tmp_path / "ref",
                                 progress=False)
    cmd = [sys.executable, "-m", "transfer.run", str(recipe), "--results-dir",
           str(tmp_path / "res"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    records = None
    while time.time() < deadline:
        found = list((tmp_path / "res").glob("grid/*/runs.jsonl"))
        if found and len(read_records(found[0])) >= 2:
            records = found[0]
            break
        time.sleep(0.05)
    assert records is not None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err
    before = len(read_records(records))
    if proc.returncode == 0:
        pytest.skip("the grid finished before the signal arrived")
    assert 2 <= before < 8
    out = records.parent
    done = subprocess.run(cmd + ["--resume", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = read_records(records)
    assert len(after) == 8  # only the missing runs ran again
    assert len({r.key for r in after}) == 8
    pd.testing.assert_frame_equal(_table(out)[METRIC_COLS], _table(reference)[METRIC_COLS])


def test_torn_last_line_does_not_break_resume(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["scratch"]))
    out, _, _ = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    out2, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", resume=out,
                                     progress=False)
    assert out2 == out and failed == 0 and int(table.loc[0, "runs"]) == 2


@dataclass
class _ExplodeOptions:
    fail_fold: int = 1


class _Explodes(Scratch):
    """Scratch, except that it raises on one fold: an injected failure."""

    Options = _ExplodeOptions

    def loss(self, tgt, src, progress):
        if self._fold == self.opts.fail_fold:
            raise RuntimeError("injected failure")
        return super().loss(tgt, src, progress)


def test_failing_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch, scoped_strategies):
    scoped_strategies("_explodes")(_Explodes)
    from transfer.grid.experiment import Experiment

    original = Experiment._train_and_test

    def tagged(self, entry, cls, specs, on_epoch):
        cls._fold = self.split_of(specs[0]).fold
        return original(self, entry, cls, specs, on_epoch)

    monkeypatch.setattr(Experiment, "_train_and_test", tagged)
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["_explodes", "scratch"]),
                         ["train.pack=1"])  # one run per pack: the failure hits one run
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    assert failed == 1
    records = read_records(out / "runs.jsonl")
    bad = [r for r in records if not r.ok]
    assert len(bad) == 1 and "injected failure" in bad[0].error and bad[0].fold == 1
    assert sum(r.ok for r in records) == 3
    row = table.set_index("strategy").loc["_explodes"]
    assert row["failed"] == 1 and row["runs"] == 1
    assert "(1 failed)" in (out / "table.md").read_text()


@dataclass
class _NanOptions:
    bad_seed: int = 1


class _NanForOneSeed(Scratch):
    """Scratch whose loss is NaN for the run with one seed: one diverging run in a pack."""

    Options = _NanOptions

    def loss(self, tgt, src, progress):
        ce, logs = super().loss(tgt, src, progress)
        seeds = next(m.run_state.seed for m in self.modules() if getattr(m, "run_state", None))
        return torch.where(seeds == self.opts.bad_seed, float("nan"), ce), logs


def test_a_diverging_run_fails_alone_and_its_pack_goes_on(tmp_path, scoped_strategies):
    scoped_strategies("_nan_for_one_seed")(_NanForOneSeed)
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["_nan_for_one_seed"]),
                         ["seeds=[0, 1]"])
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    records = read_records(out / "runs.jsonl")
    assert {r.pack for r in records} == {4}  # 2 folds x 2 seeds trained as one model
    assert failed == 2 and table.loc[0, "runs"] == 2
    for r in records:
        assert (not r.ok) == (r.seed == 1)
        if r.seed == 1:
            assert "diverged" in r.error


def test_a_raising_pack_fails_its_runs_and_the_grid_goes_on(tmp_path, monkeypatch,
                                                            scoped_strategies):
    scoped_strategies("_explodes")(_Explodes)
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["_explodes", "scratch"]))
    monkeypatch.setattr(_Explodes, "_fold", 1, raising=False)  # every pack raises
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    records = read_records(out / "runs.jsonl")
    bad = [r for r in records if not r.ok]
    assert failed == 2 and {r.strategy for r in bad} == {"_explodes"}
    assert all("injected failure" in r.error and r.pack == 2 for r in bad)
    assert sum(r.ok for r in records) == 2


@pytest.mark.slow
def test_packed_grid_table_equals_one_by_one(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", ["scratch", "dann", "mmd_ae"])
    one, _, _ = run_recipe(load_recipe(recipe, ["train.pack=1"]), results_dir=tmp_path / "one",
                           progress=False)
    packed, _, failed = run_recipe(load_recipe(recipe), results_dir=tmp_path / "packed",
                                   progress=False)
    assert failed == 0
    pd.testing.assert_frame_equal(_table(packed)[METRIC_COLS], _table(one)[METRIC_COLS])


def test_cli_exit_status_is_nonzero_when_runs_fail(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    res = subprocess.run([sys.executable, "-m", "transfer.run", str(path), "--results-dir",
                          str(tmp_path / "res"), "--quiet", "--set", "train.lr=1e30",
                          "--set", "train.optimizer=\"sgd\""],
                         capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "run(s) failed" in res.stderr
    (records,) = (tmp_path / "res").glob("tiny/*/runs.jsonl")
    assert all(r["status"] == "failed" and "diverged" in r["error"]
               for r in map(json.loads, records.read_text().splitlines()))


@pytest.mark.slow
def test_ray_executor_matches_local(tmp_path):
    pytest.importorskip("ray")
    import ray

    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["scratch", "dann"]))
    local, _, _ = run_recipe(recipe, results_dir=tmp_path / "local", progress=False)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # 2 packs, 3 slots
    try:
        remote, _, failed = run_recipe(recipe, results_dir=tmp_path / "ray", progress=False,
                                       executor="ray")
    finally:
        ray.shutdown()
    assert failed == 0
    pd.testing.assert_frame_equal(_table(remote)[METRIC_COLS], _table(local)[METRIC_COLS])
    assert {r.pack for r in read_records(remote / "runs.jsonl")} == {1}  # packs were split


def test_spread_orders_costliest_first_and_splits_what_does_not_divide_evenly():
    from transfer.grid.experiment import spread

    packs = [[f"{s}{i}" for i in range(15)] for s in "abcdefg"]
    cost = {"a": 1, "b": 2, "c": 1, "d": 2, "e": 2, "f": 1, "g": 2}  # per run
    out = spread(packs, 2, lambda p: len(p) * cost[p[0][0]])
    assert sorted(r for p in out for r in p) == sorted(r for p in packs for r in p)
    assert [p[0][0] for p in out] == list("bdegacff") and [len(p) for p in out[-2:]] == [8, 7]
    assert [len(p) for p in spread([list(range(3))], 2)] == [2, 1]  # one pack: both cores
    assert spread([[1], [2, 3], [4]], 2) == [[2, 3], [1], [4]]  # the single run is not split
    assert spread(packs[:4], 2) == packs[:4] and spread(packs, 1) == packs  # nothing to balance


def test_schedule_weighs_source_strategies_double_and_never_splits_on_a_gpu():
    from types import SimpleNamespace

    from transfer.grid.experiment import Experiment

    entries = {"s": SimpleNamespace(name="scratch"), "d": SimpleNamespace(name="ddg")}
    runs = [SimpleNamespace(strategy="s", run=("", i, 0)) for i in range(3)]
    ddg = [SimpleNamespace(strategy="d", run=("", i, 0)) for i in range(2)]
    fake = SimpleNamespace(entries=entries)
    assert Experiment.pack_cost(fake, runs) == 3 and Experiment.pack_cost(fake, ddg) == 4
    for device, order in [("cuda", ["dd", "sss"]), ("cpu", ["d", "d", "s", "s", "s"])]:
        exp = SimpleNamespace(device=torch.device(device),
                              pack_cost=lambda p: Experiment.pack_cost(fake, p),
                              unit_of=lambda spec: spec)
        packs = Experiment.schedule(exp, [runs, ddg], 3)  # the ddg pack costs more: first
        assert ["".join(r.strategy for r in p) for p in packs] == order


@pytest.mark.slow
def test_packed_runs_match_one_by_one(tmp_path):
    # jobs = 2: three packs over two workers, so the cheapest is split in two
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["scratch", "finetune", "ddg"]))
    single, _, _ = run_recipe(recipe, results_dir=tmp_path / "one", progress=False, jobs=1)
    packed, _, failed = run_recipe(recipe, results_dir=tmp_path / "two", progress=False, jobs=2)
    assert failed == 0
    packs = sorted(r.pack for r in read_records(packed / "runs.jsonl"))
    assert packs[:2] == [1, 1] and packs[-1] > 1  # one pack was split between the workers
    pd.testing.assert_frame_equal(_table(packed)[METRIC_COLS], _table(single)[METRIC_COLS])
