"""The second backbone family, ECAPA-TDNN: it packs K runs with each run's own semantics, trains
packed as its runs one by one, exports and predicts, and ships in a recipe. (Every strategy on it:
the smoke test over backbone x strategy in test_strategies.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE, pack_data

import backbones
from backbones.layers import pack_states, unpack_state
from transfer.common.config import TrainConfig
from transfer.grid.recipe import load_recipe
from transfer.train.engine import fit_runs
from transfer.train.packs import build_pack
from transfer.train.runs import RunState, install_run_state
from transfer.train.strategies import Context, get_strategy
from transfer.train.tensors import DomainTensors, Standardizer

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(filters=8, blocks=3, split=1, scale=2, se_channels=4, attention_channels=8,
             embedding_dim=8)


def _layer_scale(grads: dict[str, torch.Tensor], name: str) -> float:
    """The size of a layer's gradient: its weight's largest (a bias right before a BatchNorm
    has a gradient of pure rounding noise, which only the layer's scale can bound)."""
    weight = name.rsplit(".", 1)[0] + ".weight"
    return max(grads[name].abs().max().item(), grads.get(weight, grads[name]).abs().max().item())


def test_packed_ecapa_equals_separate_models():
    """Three runs packed in one module compute what three models compute: outputs, input and
    parameter gradients, BatchNorm statistics; with dropout, each run draws its own masks from
    its seed (the run state), so run k in the pack equals a model alone with seed k's state."""
    torch.manual_seed(0)
    kw = dict(in_features=6, num_classes=3, dropout=0.3, **SMALL)
    singles = [backbones.create("ecapa", **kw) for _ in range(3)]
    packed = backbones.create("ecapa", runs=3, **kw)
    packed.load_state_dict(pack_states([m.state_dict() for m in singles]))
    seeds = [3, 4, 5]
    install_run_state(packed, RunState.create(seeds))
    x = torch.randn(3, 7, 6, 30, generator=torch.Generator().manual_seed(1))
    xp = x.clone().requires_grad_()
    out = packed(xp)
    out.square().sum().backward()
    packed_grads = {n: p.grad for n, p in packed.named_parameters()}
    masks_differ = False
    for k, m in enumerate(singles):
        install_run_state(m, RunState.create([seeds[k]]))
        xs = x[k].clone().requires_grad_()
        o = m(xs)
        o.square().sum().backward()
        torch.testing.assert_close(out[k], o, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xp.grad[k], xs.grad, rtol=1e-4, atol=1e-6)
        back = unpack_state(packed.state_dict(), 3, k)
        for name, t in m.state_dict().items():  # BatchNorm statistics moved the same way
            torch.testing.assert_close(back[name], t, rtol=1e-5, atol=1e-6, msg=name)
        grads = {n: p.grad for n, p in m.named_parameters()}
        for name, grad in grads.items():
            torch.testing.assert_close(packed_grads[name].chunk(3)[k], grad, rtol=1e-4,
                                       atol=1e-5 * _layer_scale(grads, name), msg=name)
        with torch.no_grad():  # another seed's masks: another output (the masks are per run)
            install_run_state(m, RunState.create([seeds[(k + 1) % 3]]))
            masks_differ |= not torch.allclose(m(x[k]), o, rtol=1e-3, atol=1e-4)
    assert masks_differ


def _data():
    xt, y, source, folds = pack_data()
    return xt, y, source, [folds[0], folds[2]]  # two folds of different sizes


def _factory(k: int, runs: int = 1):
    return backbones.create("ecapa", runs=runs, in_features=6, num_classes=k, dropout=0.1,
                            **SMALL)


@pytest.mark.parametrize("name", ["joint", "ddg"])
def test_a_pack_of_ecapa_runs_trains_like_its_runs_one_by_one(name):
    """The engine trains packed ECAPA runs as it trains them alone: ``joint`` (a source branch
    on the shared general features) and ``ddg`` (an alignment phase on ``.sequence``)."""
    xt, y, source, folds = _data()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, amp=False, grad_clip=1.0)
    ctx = Context(_factory, 2, 3, _factory(3).state_dict(), 0.1)
    cls = get_strategy(name)
    opts = cls.Options(**({"align_every": 1, "align_steps": 2} if name == "ddg" else {}))

    def target(fs):
        return DomainTensors(xt, y, [Standardizer.fit(xt, tr) for tr, _ in fs],
                             [tr for tr, _ in fs], [va for _, va in fs])

    seeds = [0, 1]
    alone = []
    for fold, seed in zip(folds, seeds, strict=True):
        s = build_pack(cls, ctx, opts, [seed])
        result = fit_runs(s, target([fold]), source, cfg, [seed], torch.device("cpu"))[0]
        alone.append((result, s.state_dict()))
    packed = build_pack(cls, ctx, opts, seeds)
    results = fit_runs(packed, target(folds), source, cfg, seeds, torch.device("cpu"))
    state = packed.state_dict()
    for k, (result, single) in enumerate(alone):
        assert result.best_epoch == results[k].best_epoch
        for a, b in zip(result.curves, results[k].curves, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
        for key, value in single.items():
            if value.is_floating_point():
                torch.testing.assert_close(state[key].chunk(2)[k], value, rtol=1e-4, atol=1e-5,
                                           msg=key)
            else:
                assert torch.equal(state[key].chunk(2)[k], value), key


def test_ecapa_recipe_exports_a_model_that_predicts(tmp_path, tiny_modma):
    """End to end on the tiny pair with ``backbone.name = "ecapa"``: a finetune run trains from
    an ECAPA pretrained on the source, the exported package (plain data) rebuilds the model,
    and predict gives a row per file from it."""
    from transfer.predict import predict_files
    from transfer.run import run_recipe
    from transfer.train.package import build_model, load_package

    text = TINY_RECIPE.format(name="ecapa", strategies='[[strategies]]\nname = "finetune"\n')
    text = text.replace("[backbone]\n", '[backbone]\nname = "ecapa"\n').replace(
        'stem = "bn"', "scale = 2, se_channels = 4, attention_channels = 8, embedding_dim = 8")
    path = tmp_path / "r.toml"
    path.write_text(text)
    recipe = load_recipe(path)
    recipe.export = True
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    assert failed == 0 and list(table["strategy"]) == ["finetune"]
    package = load_package(out / "models" / "finetune.pt")
    assert package["backbone"] == "ecapa" and package["options"]["filters"] == 8
    model = build_model(package)
    assert type(model).__name__ == "Ecapa"
    for name, value in model.state_dict().items():
        assert torch.equal(value, package["state"][name]), name
    subject = sorted(p for p in tiny_modma.iterdir() if p.is_dir())[0]
    wavs = sorted(subject.glob("*.wav"))
    preds, problems = predict_files(package, wavs)
    assert not problems and set(preds["predicted"]) <= {"MDD", "HC"}
    files = preds[preds["kind"] == "file"]
    assert len(files) == len(wavs)


def test_the_ecapa_demo_recipe_builds_its_backbone():
    """recipes/demo_ecapa.toml names ECAPA options that build a model for MFCC-39 features
    (cross-field rules and the features' shape are checked when the model is built), with a
    modest parameter count."""
    from transfer.train.pretrain import make_backbone_factory

    recipe = load_recipe(ROOT / "recipes" / "demo_ecapa.toml")
    model = make_backbone_factory(recipe, 39)(6)  # MFCC-39, 6 emotions
    assert type(model).__name__ == "Ecapa" and model.options.filters == 32
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 300_000
