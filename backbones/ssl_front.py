"""The learnable layer-weighted sum over stacked self-supervised layers (SUPERB's upstream).

With ``[features] kind = "ssl"`` and ``layers = "all"`` the features are (B, L * D, T): the
``L`` hidden states of a WavLM / HuBERT / wav2vec 2.0 model stacked layer-major. A backbone
with ``layer_weights = L`` puts :class:`LayerWeightedSum` in front of its stem, so the weights
sit in ``general`` and train with it (frozen with it by ``freeze``, shared by ``joint``...).
With ``layer_weights = 0`` (the default) nothing changes: same modules, same parameter count.

Packed like every layer of :mod:`backbones.layers`: with ``runs = K`` the weights are (K, L),
one softmax per run, and the input is (K, B, L * D, T).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from backbones import OptionError


class _WeightedSum(torch.autograd.Function):
    """sum_l w[k, l] * h[k, :, l] with its backward written out per run.

    Inputs: h (K, B, L, D, T), w (K, L). Output (K, B, D, T). The weight gradient is a row sum
    of a contiguous (K, B*D*T) product per layer, so every run's value has the same bits in a
    pack of any size (autograd's broadcast reduction picks its loop order from the whole
    tensor's shape).
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor) -> Tensor:  # noqa: ANN001
        k, layers = w.shape
        wv = w.view(k, 1, layers, 1, 1)
        out = h[:, :, 0] * wv[:, :, 0]  # (K, B, D, T)
        for i in range(1, layers):
            out = out + h[:, :, i] * wv[:, :, i]
        ctx.save_for_backward(h, w)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        h, w = ctx.saved_tensors
        k, layers = w.shape
        g = grad.contiguous()
        gh = None
        if ctx.needs_input_grad[0]:
            gh = g.unsqueeze(2) * w.view(k, 1, layers, 1, 1)  # (K, B, L, D, T)
        gw = None
        if ctx.needs_input_grad[1]:
            gw = torch.stack([(g * h[:, :, i]).reshape(k, -1).sum(-1) for i in range(layers)], 1)
        return gh, gw


class LayerWeightedSum(nn.Module):
    """Softmax-weighted sum over stacked layers, one set of weights per run.

    Args:
        runs: K, how many independent copies this module holds.
        layers: the number ``L`` of stacked layers.

    Shape: (K, B, L * D, T) -> (K, B, D, T). Weight (K, L); the weights start equal (softmax
    of zeros).
    """

    def __init__(self, runs: int, layers: int) -> None:
        super().__init__()
        self.runs, self.layers = runs, layers
        self.weight = nn.Parameter(torch.zeros(runs, layers))

    def forward(self, x: Tensor) -> Tensor:
        """Each run's softmax-weighted sum of the L layers stacked on the feature axis.
        Shape: (K, B, L * D, T) -> (K, B, D, T)."""
        k, b, c, t = x.shape  # (K, B, L*D, T)
        h = x.reshape(k, b, self.layers, c // self.layers, t)  # (K, B, L, D, T)
        wide = torch.promote_types(self.weight.dtype, torch.float32)  # at least fp32
        w = torch.softmax(self.weight.to(wide), 1).to(h.dtype)  # (K, L), a softmax per run
        return _WeightedSum.apply(h, w)  # (K, B, D, T)

    def extra_repr(self) -> str:
        """Runs and layers, for ``print(model)``."""
        return f"runs={self.runs}, layers={self.layers}"


def validate(opts: Any) -> None:
    """``layer_weights`` must be 0 or divide ``in_features``."""
    n = opts.layer_weights
    if n and opts.in_features % n:
        raise OptionError(f"layer_weights ({n}) must be 0 or divide in_features "
                          f"({opts.in_features}): the features stack layer_weights layers")


def per_layer(opts: Any) -> Any:
    """The options a stem sees behind the weighted sum: ``in_features`` of one layer."""
    n = opts.layer_weights
    return dataclasses.replace(opts, in_features=opts.in_features // n) if n else opts


def make_stem(make: Callable[[Any], nn.Module], opts: Any, runs: int = 1) -> nn.Module:
    """``make(per_layer(opts))``, behind a :class:`LayerWeightedSum` when ``layer_weights``.

    Shape: (K, B, F, T) in, whatever ``make``'s stem gives out.
    """
    validate(opts)
    stem = make(per_layer(opts))
    return nn.Sequential(LayerWeightedSum(runs, opts.layer_weights), stem) \
        if opts.layer_weights else stem


def stacked_layer_options(options: dict[str, Any], in_features: int, layers: int
                          ) -> dict[str, Any]:
    """A backbone's options for features that stack ``layers`` self-supervised layers (0: they
    do not): ``in_features`` set, and ``layer_weights = layers`` unless the options set it (0
    keeps the L x dim channels as plain features). For a backbone whose options have
    ``layer_weights`` (its class hook ``options_for_features``).

    Raises:
        OptionError: ``layer_weights`` without stacked layers, or for another number of layers.
    """
    set_by_user = options.get("layer_weights")
    options = {**options, "in_features": in_features}
    if not layers:
        if set_by_user:
            raise OptionError("layer_weights needs stacked layers: features.kind = \"ssl\" "
                              "with features.layers = \"all\"")
        return options
    if set_by_user is None:
        return {**options, "layer_weights": layers}
    if set_by_user not in (0, layers):
        raise OptionError(f"layer_weights = {set_by_user}, but the features stack {layers} "
                          "layers: leave it out (set automatically) or set 0 (no weighted sum)")
    return options
