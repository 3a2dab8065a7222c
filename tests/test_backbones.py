"""Every backbone and variant builds, runs, splits into general/specific/head."""

from __future__ import annotations

import pytest
import torch

import backbones
from backbones.timnet import TimNet, TimNetOptions

VARIANTS = [
    ("timnet", {}),
    ("timnet", {"residual": "add"}),
    ("timnet", {"stem": "bn"}),
    ("timnet", {"stem": "bn_relu", "fusion": "diff"}),
    ("timnet", {"attention": "mha", "d_model": 16, "heads": 2}),
    ("transformer_timnet", {"tf_dim": 16, "tf_heads": 2, "tf_ff": 32}),
    ("transformer_timnet", {"tf_dim": 16, "tf_heads": 2, "tf_ff": 32, "fusion": "diff"}),
    ("ecapa", {}),
    ("ecapa", {"scale": 2, "kernel_size": 5, "se_channels": 4, "embedding_dim": 12}),
    ("ecapa", {"layer_weights": 3}),  # 39 features = 3 stacked layers of 13
]
#: (channels of GeneralFeatures.sequence, width of forward_features) of ``small`` per family:
#: TIM-Net stacks both directions (2 x 8) and embeds a fused scale vector (8); ECAPA's sequence
#: is its last general block (8), its embedding embedding_dim wide.
WIDTHS = {"timnet": (16, 8), "transformer_timnet": (16, 8), "ecapa": (8, 128)}


def small(name: str, **extra):
    return backbones.create(name, in_features=39, filters=8, blocks=4, split=2, num_classes=3,
                            **extra)


def test_registry_lists_every_backbone():
    assert {"timnet", "transformer_timnet", "ecapa"} <= set(backbones.names())


def test_official_parameter_count():
    m = backbones.create("timnet", in_features=39, filters=39, blocks=8, num_classes=6)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 104_456


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
@pytest.mark.parametrize("frames", [172, 188, 313])
def test_forward_backward_shapes(name, opts, frames):
    m = small(name, **opts)
    x = torch.randn(3, 39, frames)
    g = m.forward_general(x)
    seq_dim, embed = WIDTHS[name]
    embed = opts.get("embedding_dim", embed)
    assert isinstance(g, backbones.GeneralFeatures)
    assert g.vector.shape == (1, 3, 16) == (1, 3, m.general_dim)  # (K, B, split x C), K = 1
    assert g.sequence.shape == (1, seq_dim, frames, 3) and m.sequence_dim == seq_dim
    if name != "ecapa":  # TIM-Net's private state
        assert g.state.h.shape == (2, 8, frames, 3)  # (2K, C, T, B)
        assert g.state.pooled.shape == (1, 2, 8, 3)
        assert m.forward_specific(g).shape == (1, 4, 8, 3)  # every scale's vector
    assert m.head(m.forward_specific(g)).shape == (1, 3, 3)
    z = m.forward_features(x)
    assert z.shape == (3, embed) and m.embed_dim == embed
    assert m.forward_head(z).shape == (3, 3)
    out = m(x)
    assert out.shape == (3, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_unknown_option_names_allowed_ones():
    with pytest.raises(backbones.OptionError, match=r"unknown option.*filterz.*allowed.*filters"):
        backbones.create("timnet", filterz=3)
    with pytest.raises(backbones.OptionError, match="must be one of 'mul', 'add'"):
        backbones.create("timnet", residual="plus")
    with pytest.raises(backbones.OptionError, match="must be an integer"):
        backbones.create("timnet", filters=3.5)
    with pytest.raises(backbones.OptionError, match="unknown backbone"):
        backbones.create("resnet")
    with pytest.raises(backbones.OptionError, match="split"):
        backbones.create("timnet", blocks=4, split=5)


@pytest.mark.parametrize("opts", [{}, {"stem": "bn"}, {"attention": "mha", "d_model": 16,
                                                       "heads": 2}])
def test_forward_direction_is_causal(opts):
    m = small("timnet", **opts).eval()
    x = torch.randn(2, 39, 60)
    y = x.clone()
    y[:, :, 40:] = torch.randn(2, 39, 20)  # change only the future
    with torch.no_grad():
        a = m.forward_general(x).sequence[0, :8].transpose(1, 2)  # forward direction (C, B, T)
        b = m.forward_general(y).sequence[0, :8].transpose(1, 2)
    torch.testing.assert_close(a[..., :40], b[..., :40])
    assert not torch.allclose(a[..., 40:], b[..., 40:])


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
def test_general_specific_head_partition_parameters(name, opts):
    m = small(name, **opts)
    parts = [set(map(id, part.parameters())) for part in (m.general, m.specific, m.head)]
    every = set(map(id, m.parameters()))
    assert parts[0] | parts[1] | parts[2] == every
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] and parts[1]


@pytest.mark.parametrize("name", ["timnet", "ecapa"])
def test_reset_head_keeps_general_weights(name):
    m = small(name).eval()  # eval: a forward pass must not move BatchNorm statistics
    before = {k: v.clone() for k, v in m.general.state_dict().items()}
    m.reset_head(5)
    assert m(torch.randn(2, 39, 50)).shape == (2, 5) and m.options.num_classes == 5
    for k, v in m.general.state_dict().items():
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize("name", backbones.names())
def test_every_backbone_meets_the_protocol_strategies_use(name):
    model = backbones.create(name, in_features=13, num_classes=2, filters=8, blocks=3, split=1)
    assert isinstance(model, backbones.Backbone), [
        m for m in ("general", "specific", "head", "general_dim", "forward_general", "reset_head")
        if not hasattr(model, m)]
    assert model.general_dim > 0 and model.embed_dim > 0
    backbones.check_backbone(model)
    packed = backbones.create(name, runs=2 if backbones.packable(name) else 1, in_features=13,
                              num_classes=2, filters=8, blocks=3, split=1)
    backbones.check_backbone(packed, batch=3, frames=5)


class _TupleTimNet(TimNet):
    """A backbone that breaks the contract: its general features are a plain tuple."""

    def forward_general(self, x):
        g = super().forward_general(x)
        return g.vector, g.sequence


class _NarrowTimNet(TimNet):
    """A backbone whose ``vector`` is narrower than the ``general_dim`` it declares."""

    def forward_general(self, x):
        g = super().forward_general(x)
        return backbones.GeneralFeatures(g.state, g.vector[..., :-1], g.sequence)


def test_a_backbone_that_breaks_the_contract_fails_the_check_with_a_clear_message(monkeypatch):
    """Checked on a tiny input the first time a class is built (``create``), before any
    strategy reads ``.vector`` or ``.sequence``; a recipe naming such a backbone is one line."""
    from backbones import registry
    from transfer import UserError
    from transfer.grid.recipe import parse_recipe
    from transfer.train.pretrain import make_backbone_factory

    opts = TimNetOptions(in_features=5, filters=4, blocks=2, split=1)
    with pytest.raises(backbones.ContractError,
                       match=r"forward_general must return backbones\.GeneralFeatures, got tuple"):
        backbones.check_backbone(_TupleTimNet(opts))
    with pytest.raises(backbones.ContractError,
                       match=r"GeneralFeatures\.vector must be a tensor \(K, B, general_dim\) = "
                             r"\(1, 2, 4\) here, got \(1, 2, 3\)"):
        backbones.check_backbone(_NarrowTimNet(opts))
    monkeypatch.setitem(registry._REGISTRY, "_tuple", (_TupleTimNet, TimNetOptions))
    with pytest.raises(backbones.ContractError, match="backbone '_tuple'"):
        backbones.create("_tuple", in_features=5, filters=4, blocks=2, split=1)
    recipe = parse_recipe({"target": {"corpus": "modma"}, "backbone": {"name": "_tuple"},
                           "strategies": [{"name": "scratch"}]})
    with pytest.raises(UserError, match=r"^\[backbone\]: backbone '_tuple': forward_general"):
        make_backbone_factory(recipe, 5)(2)


@pytest.mark.parametrize("opts", [{}, {"stem": "bn"}])
def test_backward_direction_is_stored_in_forward_time(opts):
    """``.sequence`` (what alignment.Projector convolves) holds the backward direction in
    forward time order: its frame t depends on frames >= t only. Stored reversed (the bug the
    Projector had), changing the past would change its last frames instead."""
    m = small("timnet", **opts).eval()
    x = torch.randn(2, 39, 60)
    y = x.clone()
    y[:, :, :20] = torch.randn(2, 39, 20)  # change only the past
    with torch.no_grad():
        a = m.forward_general(x).sequence[0, 8:].transpose(1, 2)  # backward direction (C, B, T)
        b = m.forward_general(y).sequence[0, 8:].transpose(1, 2)
    torch.testing.assert_close(a[..., 20:], b[..., 20:])
    assert not torch.allclose(a[..., :20], b[..., :20])
