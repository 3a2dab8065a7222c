"""Every backbone and variant builds, runs, splits into general/specific/head."""

from __future__ import annotations

import pytest
import torch

import backbones

VARIANTS = [
    ("timnet", {}),
    ("timnet", {"residual": "add"}),
    ("timnet", {"stem": "bn"}),
    ("timnet", {"stem": "bn_relu", "fusion": "diff"}),
    ("timnet", {"attention": "mha", "d_model": 16, "heads": 2}),
    ("transformer_timnet", {"tf_dim": 16, "tf_heads": 2, "tf_ff": 32}),
    ("transformer_timnet", {"tf_dim": 16, "tf_heads": 2, "tf_ff": 32, "fusion": "diff"}),
]


def small(name: str, **extra):
    return backbones.create(name, in_features=39, filters=8, blocks=4, split=2, num_classes=3,
                            **extra)


def test_registry_lists_every_backbone():
    assert {"timnet", "transformer_timnet"} <= set(backbones.names())


def test_official_parameter_count():
    m = backbones.create("timnet", in_features=39, filters=39, blocks=8, num_classes=6)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 104_456


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
@pytest.mark.parametrize("frames", [172, 188, 313])
def test_forward_backward_shapes(name, opts, frames):
    m = small(name, **opts)
    x = torch.randn(3, 39, frames)
    g = m.forward_general(x)
    assert g.state.shape == (2, 8, frames, 3)  # (2K, C, T, B), K = 1
    assert g.sequence.shape == (1, 16, frames, 3) and g.vector.shape == (1, 3, 16)
    assert g.pooled.shape == (1, 2, 8, 3)
    assert m.forward_specific(g).shape == (1, 4, 8, 3)
    z = m.forward_features(x)
    assert z.shape == (3, 8)
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


def test_reset_head_keeps_general_weights():
    m = small("timnet").eval()  # eval: a forward pass must not move BatchNorm statistics
    before = {k: v.clone() for k, v in m.general.state_dict().items()}
    m.reset_head(5)
    assert m(torch.randn(2, 39, 50)).shape == (2, 5)
    for k, v in m.general.state_dict().items():
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize("name", backbones.names())
def test_every_backbone_meets_the_protocol_strategies_use(name):
    model = backbones.create(name, in_features=13, num_classes=2, filters=8, blocks=3, split=1)
    assert isinstance(model, backbones.Backbone), [
        m for m in ("general", "specific", "head", "general_dim", "forward_general", "reset_head")
        if not hasattr(model, m)]
    assert model.general_dim > 0 and model.embed_dim > 0


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
