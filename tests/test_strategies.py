"""Strategy semantics on a synthetic source/target pair with a known shift."""

from __future__ import annotations

import pytest
import torch

import backbones
from transfer.common.config import TrainConfig
from transfer.train.engine import fit, fit_runs
from transfer.train.infer import predict_runs
from transfer.train.packs import build_pack
from transfer.train.strategies import Context, get_strategy
from transfer.train.strategies import names as strategy_names
from transfer.train.strategies.scratch import Scratch, ScratchOptions
from transfer.train.tensors import DomainTensors, Standardizer


def _domains(seed: int, n: int = 300, f: int = 8, t: int = 40, strength: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)

    def make(shift: bool) -> torch.Tensor:
        x = torch.randn(n, f, t, generator=g)
        x[:, 0] += (y.float() * 1.5)[:, None]  # the class signal, in both domains
        if shift:  # the domain shift: an oscillation per-corpus standardisation cannot remove
            wave = torch.sin(torch.arange(t) / 1.5) * (1 + torch.rand(n, 1, 1, generator=g))
            x[:, 1:4] += 3.0 * strength * wave
            x = x + 0.8 * strength * x.roll(1, dims=1)
        return x

    def dom(x: torch.Tensor) -> DomainTensors:
        idx = torch.arange(n)
        return DomainTensors(x, y, Standardizer.fit(x, idx[:200]), idx[:200], idx[200:])

    return dom(make(False)), dom(make(True))


def _make(k: int, runs: int = 1):
    return backbones.create("timnet", runs=runs, in_features=8, filters=8, blocks=3, split=2,
                            num_classes=k, stem="bn")


CFG = TrainConfig(epochs=15, batch_size=16, lr=3e-3, amp=False)  # the mechanism, in fp32


def _train(name: str, opts: dict, seed: int, strength: float = 1.0):
    src, tgt = _domains(seed, strength=strength)
    torch.manual_seed(seed)
    pre = Scratch(Context(_make, 2, label_smoothing=0.0), ScratchOptions())
    fit(pre, src, None, CFG, seed, torch.device("cpu"))
    cls = get_strategy(name)
    torch.manual_seed(seed)
    strategy = cls(Context(_make, 2, 2, pre.model.state_dict(), 0.0), cls.Options(**opts))
    return fit(strategy, tgt, src, CFG, seed, torch.device("cpu"))


@pytest.mark.slow
def test_ddg_alignment_phase_reduces_mmd_in_its_space():
    result = _train("ddg", {"align_every": 1, "align_steps": 20}, 0, strength=3.0)
    mmd = [row["align_mmd"] for row in result.curves if "align_mmd" in row]
    assert len(mmd) == 15 and sum(mmd[-3:]) / 3 < 0.85 * mmd[0]
    accs = [row["align_disc_acc"] for row in result.curves if "align_mmd" in row]
    assert len(accs) == 15 and len(set(accs)) > 1  # the discriminator is measured every phase


def test_freeze_keeps_general_and_its_batchnorm_statistics():
    src, tgt = _domains(0)
    pre = _make(2)
    state = {k: v.clone() for k, v in pre.state_dict().items()}
    strategy = get_strategy("freeze")(Context(_make, 2, 2, state, 0.0),
                                      get_strategy("freeze").Options())
    fit(strategy, tgt, None, TrainConfig(epochs=2, batch_size=16), 0, torch.device("cpu"))
    for k, v in strategy.model.general.state_dict().items():
        torch.testing.assert_close(v, state[f"general.{k}"])
    assert any(not torch.equal(v, state[f"specific.{k}"])
               for k, v in strategy.model.specific.state_dict().items())


def test_finetune_and_joint_learning_rates():
    state = _make(2).state_dict()
    ft = get_strategy("finetune")(Context(_make, 2, 2, state, 0.0),
                                  get_strategy("finetune").Options(general_lr_scale=0.2))
    lrs = [g["lr"] for g in ft.param_groups(1.0)]
    assert lrs == [0.2, 1.0]
    joint = get_strategy("joint")(Context(_make, 2, 2, state, 0.0), get_strategy("joint").Options())
    assert [g["lr"] for g in joint.param_groups(1.0)] == [0.1, 1.0, 0.5]
    assert not hasattr(joint.branch, "general")  # the source branch runs on the shared general


SMOKE_OPTIONS = {"transformer_timnet": {"tf_dim": 16, "tf_heads": 2, "tf_ff": 32},
                 "ecapa": {"se_channels": 4, "attention_channels": 8, "embedding_dim": 8}}


@pytest.mark.parametrize("backbone", backbones.names())
@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_trains_on_every_backbone(name, backbone):
    """The contract strategies rely on (:class:`backbones.Backbone`) holds for every backbone:
    each strategy builds, takes its steps and phases, and predicts, on each registered one."""
    src, tgt = _domains(0, n=240, t=24)  # 200 train, 40 validation segments
    runs = 2 if backbones.packable(backbone) else 1

    def make(k: int, r: int = 1):
        return backbones.create(backbone, runs=r, in_features=8, filters=8, blocks=3, split=2,
                                num_classes=k, **SMOKE_OPTIONS.get(backbone, {}))

    assert isinstance(make(2), backbones.Backbone)
    pre = make(2).state_dict()
    cls = get_strategy(name)
    opts = {"align_every": 1, "align_steps": 2} if name == "ddg" else {}
    ctx = Context(make, 2, 2, pre, 0.0)
    if cls.target_labels == "none":  # classifies with the source's head: the unlabelled mode
        ctx = ctx.unlabelled()
    strategy = build_pack(cls, ctx, cls.Options(**opts), list(range(runs)))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, amp=False)
    results = fit_runs(strategy, tgt.for_runs(runs), src, cfg, list(range(runs)),
                       torch.device("cpu"))
    assert len(results) == runs and not any(r.diverged for r in results)
    probs = predict_runs(strategy, tgt.for_runs(runs), [tgt.val[0]] * runs)
    assert len(probs) == runs
    assert all(p.shape == (len(tgt.val[0]), 2) and torch.isfinite(p).all() for p in probs)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_alignment_phase_steps_are_clipped(clip):
    """The alignment phase's steps get the gradient clipping ordinary steps get: with plain
    SGD (phase lr 1, no momentum) each clipped step moves the projectors (which only the phase
    trains) by at most ``grad_clip``."""
    src, tgt = _domains(0, n=240, t=24)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1.0, optimizer="sgd", momentum=0.0,
                      grad_clip=clip, amp=False, select="last")
    torch.manual_seed(0)
    cls = get_strategy("ddg")
    strategy = cls(Context(_make, 2, 2, _make(2).state_dict(), 0.0),
                   cls.Options(align_every=1, align_steps=3, align_lr=1.0, proj_lr_scale=1.0,
                               align_momentum=0.0))
    before = [p.detach().clone() for p in strategy.proj_target.parameters()]
    fit(strategy, tgt, src, cfg, 0, torch.device("cpu"))
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum()
                           for p, b in zip(strategy.proj_target.parameters(), before, strict=True)))
    if clip:
        assert 0 < moved <= 3 * clip * 1.001  # 3 clipped steps of at most clip each
    else:
        assert moved > 10 * 3e-3  # unclipped, the same steps move far more


@pytest.mark.parametrize("name", ["dann", "coral", "mmd_ae"])
def test_aligning_strategies_refuse_a_backbone_without_general_features(name):
    def make(k: int, runs: int = 1):  # split = 0: every block is specific, general_dim 0
        return backbones.create("timnet", runs=runs, in_features=8, filters=8, blocks=3, split=0,
                                num_classes=k, stem="bn")

    from transfer import UserError

    cls = get_strategy(name)
    with pytest.raises(UserError, match=f"strategy '{name}' aligns general features.*general_dim 0"):
        cls(Context(make, 2, 2, make(2).state_dict(), 0.0), cls.Options())
