"""Hyperparameter sweeps: declared spaces, reproducible draws, per-run hyperparameters in one
pack, selection that never sees the test fold, successive halving that leaves the pack."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import run_record, tiny_recipe

from transfer import UserError
from transfer.common.config import TrainConfig
from transfer.common.options import LogUniform, search_space
from transfer.grid import sweep
from transfer.grid.experiment import Experiment
from transfer.grid.recipe import apply_set, load_recipe, parse_recipe
from transfer.grid.records import read_records
from transfer.report import sweep as report_sweep
from transfer.run import run_recipe
from transfer.train.engine import Halving, _Fit, fit_runs
from transfer.train.packs import build_pack
from transfer.train.strategies import Context, get_strategy, names
from transfer.train.tensors import DomainTensors, Standardizer

BASE = {"target": {"corpus": "modma"}, "source": {"corpus": "casia"},
        "strategies": [{"name": "scratch"}, {"name": "dann"}]}


def _parse(*sets: str):
    data = json.loads(json.dumps(BASE))
    for s in sets:
        apply_set(data, s)
    return parse_recipe(data)


# --- spaces and draws ---------------------------------------------------------------------------
def test_every_strategy_declares_its_space_beside_its_options():
    for name in names():
        for field, space in search_space(get_strategy(name).Options).items():
            assert field in get_strategy(name).Options.__dataclass_fields__, (name, field)
            assert space.values()  # a usable distribution
    assert isinstance(search_space(TrainConfig)["lr"], LogUniform)
    r = _parse("sweep.draws=4")
    assert list(r.strategies[1].search)[:2] == ["train.lr", "train.weight_decay"]
    assert {"adv_weight", "grl_gamma"} <= set(r.strategies[1].search)


@pytest.mark.parametrize("sets, message", [
    (["strategies.dann.search={adv_weght=[0.1, 1]}"], r"'adv_weght' is not an option.*adv_weight"),
    (["strategies.dann.search={adv_weight=[2, 1]}"], r"search.adv_weight: the range \[2, 1\] "
                                                      r"is empty"),
    (["strategies.dann.search={adv_weight={uniform=[-1, 1]}}"],
     r"adv_weight \(a value of its space\) must be >= 0"),
    (["strategies.dann.search={adv_weight={log_uniform=[0, 1]}}"], r"needs low > 0"),
    (["strategies.dann.search={adv_weight={gauss=[0, 1]}}"], r"must be \[low, high\], false"),
    (["sweep.train={lr=[1e-4, 1e-2], momentom=[0.1, 0.9]}"], r"'momentom' is not an option"),
    (["sweep.train={momentum=[0.1, 0.9]}"], r"declares none; give one of"),
    (["sweep.draws=0"], r"'sweep\.draws' must be in \[1, 10000\]"),
    (["sweep.rungs=[0.5, 1.5]"], r"'sweep\.rungs' must be a list of numbers in \(0, 1\)"),
    (["sweep.draws=3", "sweep.train={lr=false, weight_decay=false}",
      "strategies.dann.search={adv_weight=false, grl_max=false, grl_gamma=false, "
      "disc_hidden=false}"], "no strategy has anything to tune"),
])
def test_a_bad_space_is_one_line_naming_it(sets, message):
    with pytest.raises(UserError, match=message):
        _parse(*sets)


def test_draws_are_reproducible_the_defaults_first_and_kept_when_draws_grow():
    r = _parse("sweep.draws=4", "sweep.seed=7", "strategies.dann.search={adv_weight=[0.1, 1]}")
    dann = r.strategies[1]
    draws = [sweep.draw(r, dann, d) for d in range(4)]
    assert draws[0] == {} and all(draws[1:])
    assert all(0.1 <= d["adv_weight"] <= 1 for d in draws[1:])
    more = _parse("sweep.draws=9", "sweep.seed=7", "strategies.dann.search={adv_weight=[0.1, 1]}")
    assert draws == [sweep.draw(more, more.strategies[1], d) for d in range(4)]
    other_seed = _parse("sweep.draws=4", "sweep.seed=8")
    assert sweep.draw(other_seed, other_seed.strategies[1], 1) != draws[1]
    applied = sweep.apply(r, dann, draws[2])
    assert applied.options.adv_weight == draws[2]["adv_weight"]
    assert applied.train.lr == draws[2]["train.lr"] and r.train.lr == 1e-3  # a copy


def test_only_draws_that_differ_in_shape_or_structure_are_packed_apart():
    r = _parse("sweep.draws=2")
    dann = r.strategies[1]
    per_run = {"train.lr": 1e-3, "adv_weight": 0.3, "grl_gamma": 5.0}
    assert sweep.pack_key(r, dann, per_run) == ()
    assert sweep.pack_key(r, dann, {**per_run, "disc_hidden": 32}) == (("disc_hidden", 32),)


# --- the plan -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A tiny pair, loaded once: scratch + finetune, 2 folds."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = tiny_recipe(tmp / "s.toml", ["scratch", "finetune"], name="s")
    return path, Experiment(load_recipe(path), progress=False).load()


def test_draw_zero_keeps_the_run_keys_of_a_recipe_without_a_sweep(loaded):
    path, plain = loaded
    swept = Experiment(load_recipe(path, ["sweep.draws=3", "protocol.compare=['segment-random']"]),
                       progress=False)
    swept.target, swept.source, swept.pretrained = plain.target, plain.source, plain.pretrained
    swept.build_splits()
    plan = swept.plan()
    assert {s.key for s in plan if s.draw == 0 and s.protocol == "subject-kfold"} \
        == {s.key for s in plain.plan()}
    assert {s.draw for s in plan if s.protocol == "segment-random"} == {0}  # not swept
    assert len({s.key for s in plan}) == len(plan) == 2 * (3 * 2 + 1)
    for spec in plan:  # a draw is the same setting for every fold and seed
        same = {s.values for s in plan if s.strategy == spec.strategy and s.draw == spec.draw}
        assert len(same) == 1


# --- selection never sees the test fold ---------------------------------------------------------
def _fold(exp: Experiment, fold: int):
    todo = [s for s in exp.plan() if s.fold == fold and s.protocol == "subject-kfold"]
    out = []
    for pack in exp.packs(todo):
        out += [res.record for res in exp.execute_pack(pack)]
    return out


def test_changing_only_the_test_folds_labels_changes_no_selection(loaded):
    path, plain = loaded
    exp = Experiment(load_recipe(path, ["sweep.draws=3", "train.epochs=3"]), progress=False)
    exp.target, exp.source, exp.pretrained = plain.target, plain.source, plain.pretrained
    exp.build_splits()
    before = _fold(exp, 0)
    test = exp.split_of(next(s for s in exp.plan() if s.fold == 0)).test
    y = exp.target.y.copy()
    exp.target.y[test] = 1 - exp.target.y[test]  # the test fold's labels, flipped
    exp._tensors = {}
    try:
        after = _fold(exp, 0)
    finally:
        exp.target.y[:] = y
        exp._tensors = {}
    key = {r.key: r for r in after}
    for r in before:
        assert r.validation == key[r.key].validation
    assert [(r.strategy, r.draw) for r in report_sweep.selected(before)] \
        == [(r.strategy, r.draw) for r in report_sweep.selected(after)]
    for r in before:  # the test folds did change: their units' labels are flipped
        assert key[r.key].units.y == [1 - v for v in r.units.y]


def test_selection_reads_only_validation_scores():
    def rec(draw, val, test, fold=0, loss=0.5):
        return run_record(key=f"{draw}-{fold}", strategy="a", protocol="p", fold=fold,
                          draw=draw, hparams={"train.lr": 10.0 ** -draw},
                          validation={"unit_uar": val, "loss": loss}, metrics={"unit_uar": test})
    records = [rec(0, 0.6, 0.9), rec(1, 0.8, 0.5), rec(2, 0.8, 0.7, loss=0.4),
               rec(3, 0.4, 1.0)]  # draws 1 and 2 tie on UAR: the lower loss wins
    assert report_sweep.selected(records)[0].draw == 2
    assert report_sweep.oracle(records)[0].draw == 3
    frame = report_sweep.selection_frame(records)
    assert frame.loc[0, "regret"] == pytest.approx(0.3) and frame.loc[0, "default_test"] == 0.9


# --- known answer: a clearly bad learning rate is never selected ---------------------------------
def test_selection_picks_a_good_learning_rate_for_every_fold(tmp_path):
    extra = """
[sweep]
draws = 4
seed = 3
train = { lr = { choice = [1e-7, 0.01] }, weight_decay = false }
"""
    path = tiny_recipe(tmp_path / "lr.toml", ["scratch"], name="lr", extra=extra)
    recipe = load_recipe(path, ["train.lr=1e-7", "train.epochs=6", "protocol.folds=3"])
    lrs = [sweep.draw(recipe, recipe.strategies[0], d).get("train.lr", 1e-7) for d in range(4)]
    assert 1e-7 in lrs and 0.01 in lrs  # the space gives both: a real choice
    out, _, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    assert failed == 0
    records = read_records(out / "runs.jsonl")
    chosen = report_sweep.selected(records)
    assert len(chosen) == 3
    assert all(r.hparams.get("train.lr") == 0.01 for r in chosen), \
        [(r.fold, r.hparams, r.validation) for r in chosen]
    text = (out / "sweep.md").read_text()
    assert "oracle" in text and "regret" in text and (out / "sweep.csv").is_file()
    assert (out / "figures" / "sweep_scratch.png").is_file()
    assert "tuned" in (out / "table.md").read_text()


# --- successive halving leaves the pack ---------------------------------------------------------
def _data(n: int = 96, f: int = 6, t: int = 20):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, f, t, generator=g)
    x[:, 0] += y[:, None]
    folds = [(torch.arange(0, 64), torch.arange(64, 80)), (torch.arange(16, 80),
                                                           torch.arange(80, 96))]
    return x, y, folds


def _factory(k: int, runs: int = 1):
    import backbones

    return backbones.create("timnet", runs=runs, in_features=6, filters=4, blocks=2, split=1,
                            num_classes=k, stem="bn", dropout=0.1)


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_halving_stops_the_worse_draws_and_the_survivors_train_as_they_would_alone(monkeypatch):
    """Two folds x two draws (learning rates) in one pack, halved after epoch 1: per fold one
    draw stops (never draw 0, which is protected), the pack is rebuilt with the two
    survivors (their Adam moments, step and dropout counters carried over), and each survivor's
    curve equals its run trained alone."""
    x, y, folds = _data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, amp=False, select="val_loss")
    lrs = [3e-3, 1e-6, 3e-3, 1e-6]  # runs: (fold 0, draw 0), (fold 0, draw 1), (fold 1, ...)
    cfgs = [TrainConfig(**{**cfg.__dict__, "lr": lr}) for lr in lrs]
    fold_of = [0, 0, 1, 1]
    ctx = Context(_factory, 2, 0, None, 0.1)
    cls = get_strategy("scratch")
    seeds = [0, 1, 2, 3]
    sizes = []
    compact = _Fit.compact
    monkeypatch.setattr(_Fit, "compact", lambda self, keep: sizes.append(len(keep))
                        or compact(self, keep))

    def dom(runs):
        return DomainTensors(x, y, [Standardizer.fit(x, folds[fold_of[k]][0]) for k in runs],
                             [folds[fold_of[k]][0] for k in runs],
                             [folds[fold_of[k]][1] for k in runs])

    with _one_thread():
        packed = build_pack(cls, ctx, cls.Options(), seeds)
        halving = Halving((1,), fold_of, [True, False, True, False])
        results = fit_runs(packed, dom(range(4)), None, cfgs, seeds, torch.device("cpu"),
                           halving=halving)
        alone = {}
        for k in (0, 2):
            single = build_pack(cls, ctx, cls.Options(), [seeds[k]])
            alone[k] = fit_runs(single, dom([k]), None, cfgs[k], [seeds[k]],
                                torch.device("cpu"))[0]
    assert sizes == [2]  # rebuilt once, with the two survivors
    assert [r.stopped for r in results] == ["", "halving", "", "halving"]
    assert [r.epochs_run for r in results] == [3, 1, 3, 1]
    for k in (0, 2):
        for a, b in zip(alone[k].curves, results[k].curves, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=2e-6)
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=6e-3)


def test_a_halving_sweep_runs_end_to_end_and_keeps_draw_zero(tmp_path):
    extra = """
[sweep]
draws = 4
halving = true
rungs = [0.34]
"""
    path = tiny_recipe(tmp_path / "h.toml", ["scratch"], name="h", extra=extra)
    recipe = load_recipe(path, ["train.epochs=3"])
    assert sweep.rung_epochs(recipe) == (1,)
    out, _, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    records = read_records(out / "runs.jsonl")
    assert failed == 0 and len(records) == 4 * 2
    halved = [r for r in records if r.stopped == "halving"]
    assert halved and all(r.draw != 0 for r in halved)
    assert all(r.epochs_run == 1 for r in halved)
    per_group = {}
    for r in records:
        per_group.setdefault((r.strategy, r.fold), []).append(r.stopped)
    assert all(s.count("halving") == 2 for s in per_group.values())  # 4 draws -> 2 survive
    table = (out / "table.csv").read_text()
    assert "scratch" in table and (out / "sweep.md").is_file()
    frame = report_sweep.selection_frame(records)
    assert (frame["stopped_by_halving"] == 2).all()
    assert np.isfinite(frame["regret"]).all() and (frame["regret"] >= 0).all()
