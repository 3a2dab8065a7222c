"""TIM-Net (Ye et al., ICASSP 2023) and its research variants, split into general/specific,
with both directions fused and K independent runs packed into one module.

Per direction: a 1x1 convolution, then Temporal Aware Blocks (TABs) with dilations 1, 2, 4, ...
A TAB is two [causal dilated Conv1d (kernel 2) -> BatchNorm -> ReLU -> spatial dropout]
followed by a sigmoid gate multiplied with the block input. The backward direction runs on the
time-reversed input with its own weights. After every block the two directions are summed and
average-pooled over time (one vector per scale); a learned weight vector fuses the scales and a
linear layer classifies. With 39 features, 39 filters, 8 blocks and 6 classes the model has
104,456 trainable parameters, as the official Keras model.

Fusion: the two directions of a block are one grouped convolution (groups = 2) and one
BatchNorm over the concatenated channels; with ``runs = K`` the groups are K x 2 and the
module trains K independent copies at once (see :mod:`backbones.layers`). Same maths as two
convolutions per block and K separate models.

Variants (options): ``residual`` mul|add, ``stem`` none|bn|bn_relu (a 1x1 conv + BatchNorm
[+ ReLU] in front), ``fusion`` weight|diff (DeltaTIM: differences of successive scales plus the
last one), ``attention`` none|mha (AT-TIM: causal multi-head attention after every block),
``layer_weights`` (stacked self-supervised layers fused by learned softmax weights in front of
the stem, :mod:`backbones.ssl_front`).

Split: ``general`` = stem + the input convolutions + the first ``split`` blocks;
``specific`` = the remaining blocks; ``head`` = scale fusion + classifier.

Shapes: ``forward`` takes (B, F, T) -> (B, classes), or packed (K, B, F, T) -> (K, B, classes).
Inside, sequences are time-major (G, C, T, B) with G = 2 K groups (run-major, forward direction
first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from backbones import ssl_front
from backbones.features import GeneralFeatures
from backbones.layers import RunBatchNorm, RunDropout, RunLinear, RunModule, TemporalConv, gate_mean
from backbones.registry import OptionError, register
from transfer.common.options import opt


@dataclass
class TimNetOptions:
    """Options of ``timnet``.

    Args:
        in_features: feature dimension of the input (39 for MFCC-39).
        num_classes: classes of the head.
        filters: channels of every block.
        blocks: number of Temporal Aware Blocks per direction (dilations 1, 2, ..., 2^(blocks-1)).
        kernel_size: kernel of the dilated causal convolutions.
        dropout: spatial dropout rate (whole channels).
        split: how many blocks belong to ``general``; the rest are ``specific``.
        residual: ``mul`` (input x sigmoid gate, official) or ``add`` (input + block output).
        stem: ``none`` (official), ``bn`` (1x1 conv + BatchNorm) or ``bn_relu`` (+ ReLU).
        fusion: ``weight`` (learned weights over scales, official) or ``diff`` (DeltaTIM).
        attention: ``none`` or ``mha`` (AT-TIM: causal multi-head attention after every block).
        d_model, heads: attention width and heads (``attention = "mha"``).
        bn_momentum: BatchNorm momentum (PyTorch convention; Keras' 0.99 is 0.01 here).
        layer_weights: L > 0: the input stacks L self-supervised layers (in_features = L x dim)
            and a learned softmax-weighted sum over them (SUPERB) precedes the stem, in
            ``general``; set automatically with features.kind = "ssl", layers = "all". 0 = off.
    """

    in_features: int = opt(39, ge=1)
    num_classes: int = opt(2, ge=1)
    filters: int = opt(39, ge=1)
    blocks: int = opt(8, ge=1)
    kernel_size: int = opt(2, ge=1)
    dropout: float = opt(0.1, ge=0, lt=1, per_run=False)
    split: int = opt(3, ge=0)
    residual: Literal["mul", "add"] = "mul"
    stem: Literal["none", "bn", "bn_relu"] = "none"
    fusion: Literal["weight", "diff"] = "weight"
    attention: Literal["none", "mha"] = "none"
    d_model: int = opt(128, ge=1)
    heads: int = opt(4, ge=1)
    # 0 would freeze the running statistics at their start (mean 0, variance 1), 1 keeps only
    # the last batch's: evaluation then normalises by something the training never used.
    bn_momentum: float = opt(0.1, gt=0, lt=1, per_run=False)
    layer_weights: int = opt(0, ge=0)

    def validate(self) -> None:
        """Cross-field rules the user's options decide (the single-field ranges are declared
        above; whether ``layer_weights`` divides the data's ``in_features`` is checked when the
        model is built)."""
        if self.split > self.blocks:
            raise OptionError(f"split must be between 0 and blocks={self.blocks}, got {self.split}")
        if self.attention == "mha" and self.d_model % self.heads:
            raise OptionError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")


class TimNetState(NamedTuple):
    """TIM-Net's private part of :class:`GeneralFeatures` (what ``forward_specific`` reads).

    Shape:
        h: (2K, C, T, B), both directions after the general blocks (the backward one in
            reversed time).
        pooled: (K, split, C, B), one time-averaged vector per general scale.
    """

    h: Tensor
    pooled: Tensor


def _vector(pooled: Tensor) -> Tensor:
    """The pooled general scales as one vector per segment: (K, split, C, B) -> (K, B, split C)."""
    k, s, c, b = pooled.shape
    return pooled.permute(0, 3, 1, 2).reshape(k, b, s * c)


def _sequence(h: Tensor) -> Tensor:
    """Both directions in forward time, stacked on channels: (2K, C, T, B) -> (K, 2C, T, B)."""
    g, c, t, b = h.shape
    seq = h.view(g // 2, 2, c, t, b)
    return torch.cat([seq[:, 0], seq[:, 1].flip(2)], 1)


class CausalAttention(RunModule):
    """Multi-head self-attention over time with a causal mask and a residual connection, one
    independent attention per group (direction x run), as batched matmuls.

    Shape: (G, C, T, B) -> (G, C, T, B).
    """

    def __init__(self, groups: int, channels: int, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.proj_in = TemporalConv(groups, channels, d_model)
        self.qkv = TemporalConv(groups, d_model, 3 * d_model)
        self.out = TemporalConv(groups, d_model, d_model)
        self.proj_out = TemporalConv(groups, d_model, channels)
        for conv in (self.qkv, self.out):  # nn.MultiheadAttention's initialisation
            nn.init.xavier_uniform_(conv.weight.view(-1, d_model))
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` plus causal self-attention over its time steps, per group.
        Shape: (G, C, T, B) -> (G, C, T, B)."""
        g, _, t, b = x.shape
        d = self.qkv.weight.shape[-1]
        h, dh = self.heads, d // self.heads
        qkv = self.qkv(self.proj_in(x)).view(g, 3, h, dh, t, b)
        q, k, v = (qkv[:, i].permute(4, 0, 1, 3, 2).reshape(b, g * h, t, dh) for i in range(3))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, G*H, T, dh)
        a = a.view(b, g, h, t, dh).permute(1, 2, 4, 3, 0).reshape(g, d, t, b)
        return x + self.proj_out(self.out(a))


class TemporalAwareBlock(nn.Module):
    """Two causal dilated conv layers gating (or added to) the block input, for every group.

    Shape: (G, C, T, B) -> (G, C, T, B).
    """

    def __init__(self, runs: int, channels: int, dilation: int, opts: TimNetOptions) -> None:
        super().__init__()
        g = 2 * runs
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [TemporalConv(g, channels, channels, opts.kernel_size, dilation),
                       RunBatchNorm(runs, g * channels, eps=1e-3, momentum=opts.bn_momentum),
                       nn.ReLU(), RunDropout(runs, opts.dropout)]
        self.convs = nn.Sequential(*layers)
        self.residual = opts.residual
        self.attention = (CausalAttention(g, channels, opts.d_model, opts.heads)
                          if opts.attention == "mha" else None)

    def forward(self, x: Tensor) -> Tensor:
        """The block's output alone (see :meth:`forward_mean`). Shape: (G, C, T, B) -> same."""
        return self.forward_mean(x)[0]

    def forward_mean(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block's output (G, C, T, B) and its mean over time (G, C, B); the gate and the
        mean are one pass where they can be."""
        h = x
        layers = self.convs  # conv, BatchNorm, ReLU, dropout; twice
        for i in range(0, len(layers), 4):
            h = layers[i + 1].conv_relu_dropout(layers[i], h, layers[i + 3])
        if self.residual == "mul":
            out, mean = gate_mean(x, h)
            if self.attention is None:
                return out, mean
        else:
            out = x + h
        if self.attention is not None:
            out = self.attention(out)
        return out, out.mean(2)


class Head(nn.Module):
    """Fuses per-scale vectors with learned weights and classifies, per run.

    Shape: scales (K, S, C, B) -> fused (K, B, C) -> logits (K, B, num_classes).
    """

    def __init__(self, runs: int, scales: int, channels: int, num_classes: int, fusion: str
                 ) -> None:
        super().__init__()
        self.fusion = fusion
        self.weight = nn.Parameter(torch.full((runs, scales), 1.0 / scales))
        self.classifier = RunLinear(runs, channels, num_classes)

    def fuse(self, scales: Tensor) -> Tensor:
        """The weighted sum over scales (``fusion = "diff"``: of successive differences plus the
        last scale). Shape: (K, S, C, B) -> (K, B, C)."""
        if self.fusion == "diff":  # DeltaTIM: successive differences plus the last scale
            scales = torch.cat([scales[:, 1:] - scales[:, :-1], scales[:, -1:]], dim=1)
        return torch.einsum("kscb,ks->kbc", scales, self.weight.to(scales.dtype))

    def forward(self, scales: Tensor) -> Tensor:
        """Logits of the fused scales. Shape: (K, S, C, B) -> (K, B, num_classes)."""
        return self.classifier(self.fuse(scales))


class Stem(nn.Module):
    """1x1 conv + BatchNorm (+ ReLU) per run. Shape: (K, F, T, B) -> (K, C, T, B)."""

    def __init__(self, runs: int, in_features: int, channels: int, momentum: float, relu: bool
                 ) -> None:
        super().__init__()
        self.conv = TemporalConv(runs, in_features, channels)
        self.bn = RunBatchNorm(runs, runs * channels, eps=1e-3, momentum=momentum)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (K, F, T, B) -> (K, C, T, B)."""
        h = self.bn(self.conv(x))
        return torch.relu(h) if self.relu else h


class InputConv(nn.Module):
    """The stem output into both directions: (K, F', T, B) -> (2K, C, T, B), the backward
    direction on the time-reversed input."""

    def __init__(self, runs: int, in_features: int, channels: int) -> None:
        super().__init__()
        self.conv = TemporalConv(2 * runs, in_features, channels)

    def forward(self, h: Tensor) -> Tensor:
        """Shape: (K, F', T, B) -> (2K, C, T, B): run k's forward direction at 2k, its backward
        (time-reversed) one at 2k + 1."""
        k, f, t, b = h.shape
        both = torch.stack([h, h.flip(2)], 1).view(2 * k, f, t, b)
        return self.conv(both)


@register("timnet", TimNetOptions)
class TimNet(nn.Module):
    """TIM-Net with a general/specific split (see the module docstring).

    Args:
        opts: the options.
        runs: K, how many independent copies this module trains at once.
    """

    options: TimNetOptions
    packable = True  # every layer has a grouped form

    def __init__(self, opts: TimNetOptions, runs: int = 1) -> None:
        super().__init__()
        self.options, self.runs = opts, runs
        c, k = opts.filters, opts.split
        blocks = [TemporalAwareBlock(runs, c, 2 ** i, opts) for i in range(opts.blocks)]
        self.general = nn.ModuleDict({
            "stem": ssl_front.make_stem(self._make_stem, opts, runs),  # checks layer_weights
            "inputs": InputConv(runs, self._stem_features(ssl_front.per_layer(opts)), c),
            "blocks": nn.ModuleList(blocks[:k]),
        })
        self.specific = nn.ModuleDict({"blocks": nn.ModuleList(blocks[k:])})
        self.head = Head(runs, opts.blocks, c, opts.num_classes, opts.fusion)

    # --- the registry's hooks (before a model exists) --------------------------------------
    @classmethod
    def options_for_features(cls, options: dict[str, Any], in_features: int,
                             stacked_layers: int) -> dict[str, Any]:
        """Stacked self-supervised layers set ``layer_weights`` (:mod:`backbones.ssl_front`)."""
        return ssl_front.stacked_layer_options(options, in_features, stacked_layers)

    @staticmethod
    def activation_bytes(opts: TimNetOptions, batch: int, frames: int) -> int:
        """The largest of: a block's activation (both directions, C channels), the attention's
        query-key-value tensor (``attention = "mha"``) and the input batch; float32."""
        widths = [2 * opts.filters, opts.in_features]
        if opts.attention == "mha":
            widths.append(2 * 3 * opts.d_model)  # both directions' q, k, v
        return 4 * batch * frames * max(widths)

    @staticmethod
    def upgrade_state(state: dict[str, Tensor], opts: TimNetOptions) -> dict[str, Tensor]:
        """See :func:`upgrade_state` (the unfused layout of ser-transfer 0.1)."""
        return upgrade_state(state, opts)

    # Subclasses put other front ends in the stem: (K, B, F, T) -> (K, F', T, B).
    def _make_stem(self, opts: TimNetOptions) -> nn.Module:
        if opts.stem == "none":
            return _Transpose()
        return nn.Sequential(_Transpose(), Stem(self.runs, opts.in_features, opts.filters,
                                                opts.bn_momentum, opts.stem == "bn_relu"))

    def _stem_features(self, opts: TimNetOptions) -> int:
        return opts.in_features if opts.stem == "none" else opts.filters

    @property
    def embed_dim(self) -> int:
        """Channels of every scale vector (C)."""
        return self.options.filters

    @property
    def general_dim(self) -> int:
        """Width of :attr:`GeneralFeatures.vector` (split x C)."""
        return self.options.split * self.options.filters

    @property
    def sequence_dim(self) -> int:
        """Channels of :attr:`GeneralFeatures.sequence` (2 C)."""
        return 2 * self.options.filters

    @staticmethod
    def _pool(mean: Tensor) -> Tensor:
        """A block's time mean (G, C, B) -> (K, C, B), the two directions summed."""
        g, c, b = mean.shape
        return mean.view(g // 2, 2, c, b).sum(1)

    def forward_general(self, x: Tensor) -> GeneralFeatures:
        """x: (K, B, F, T) (or (B, F, T) for K = 1). ``vector``: the time means of the general
        blocks (both directions summed), (K, B, split C); ``sequence``: both directions after
        them, in forward time, (K, 2C, T, B); ``state``: a :class:`TimNetState`."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        h = self.general["inputs"](self.general["stem"](x))  # (2K, C, T, B)
        pooled = []
        for block in self.general["blocks"]:
            h, mean = block.forward_mean(h)
            pooled.append(self._pool(mean))
        k, b = x.shape[0], x.shape[1]
        stacked = (torch.stack(pooled, 1) if pooled
                   else h.new_zeros(k, 0, self.options.filters, b))
        return GeneralFeatures(TimNetState(h, stacked),  # stacked (K, split, C, B)
                               vector=lambda: _vector(stacked), sequence=lambda: _sequence(h))

    def forward_specific(self, g: GeneralFeatures) -> Tensor:
        """All per-scale vectors, general then specific: (K, blocks, C, B)."""
        h, pooled = g.state.h, [g.state.pooled]
        for block in self.specific["blocks"]:
            h, mean = block.forward_mean(h)
            pooled.append(self._pool(mean).unsqueeze(1))
        return torch.cat(pooled, 1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The fused embedding: (K, B, C), or (B, C) for a (B, F, T) input."""
        z = self.head.fuse(self.forward_specific(self.forward_general(x)))
        return z[0] if x.dim() == 3 else z

    def forward_head(self, z: Tensor) -> Tensor:
        """Logits of fused embeddings: (K, B, C) -> (K, B, classes), or (B, C) -> (B, classes)."""
        return self.head.classifier(z.unsqueeze(0))[0] if z.dim() == 2 else self.head.classifier(z)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: (K, B, F, T) -> (K, B, classes), or (B, F, T) -> (B, classes)."""
        logits = self.head(self.forward_specific(self.forward_general(x)))  # (K, B, classes)
        return logits[0] if x.dim() == 3 else logits

    def reset_head(self, num_classes: int) -> None:
        """A fresh head for ``num_classes``; ``general`` and ``specific`` are untouched."""
        self.options.num_classes = num_classes
        device = self.head.weight.device
        self.head = Head(self.runs, self.options.blocks, self.options.filters, num_classes,
                         self.options.fusion).to(device)


class _Transpose(nn.Module):
    """(K, B, F, T) -> (K, F, T, B): the packed, time-major sequence layout."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).contiguous()


def upgrade_state(state: dict[str, Tensor], opts: TimNetOptions) -> dict[str, Tensor]:
    """A state dict of the unfused TIM-Net of ser-transfer 0.1 (two convolutions and two
    BatchNorms per block, ``general.in_fwd`` / ``in_bwd``, ``general.fwd.<i>`` / ``bwd.<i>``)
    in this module's layout (runs = 1); other states are returned unchanged."""
    if "general.in_fwd.weight" not in state:
        return state
    k = opts.split
    new: dict[str, Tensor] = {}

    def conv(prefix_f: str, prefix_b: str, out: str) -> None:
        wf, wb = state[f"{prefix_f}.weight"], state[f"{prefix_b}.weight"]  # (Cout, Cin, k)
        new[f"{out}.weight"] = torch.stack([wf, wb]).permute(0, 3, 1, 2).contiguous()
        new[f"{out}.bias"] = torch.stack([state[f"{prefix_f}.bias"], state[f"{prefix_b}.bias"]])

    def bn(prefix_f: str, prefix_b: str, out: str) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            new[f"{out}.{name}"] = torch.cat([state[f"{prefix_f}.{name}"],
                                              state[f"{prefix_b}.{name}"]])

    if "general.stem.0.weight" in state:  # stem conv + BatchNorm
        new["general.stem.1.conv.weight"] = state["general.stem.0.weight"].permute(2, 0, 1)[None]
        new["general.stem.1.conv.bias"] = state["general.stem.0.bias"][None]
        for name in ("weight", "bias", "running_mean", "running_var"):
            new[f"general.stem.1.bn.{name}"] = state[f"general.stem.1.{name}"]
    conv("general.in_fwd", "general.in_bwd", "general.inputs.conv")
    for i in range(opts.blocks):
        part, j = ("general", i) if i < k else ("specific", i - k)
        for layer, (ci, bi) in enumerate(((0, 1), (4, 5))):
            conv(f"{part}.fwd.{j}.convs.{ci}", f"{part}.bwd.{j}.convs.{ci}",
                 f"{part}.blocks.{j}.convs.{4 * layer}")
            bn(f"{part}.fwd.{j}.convs.{bi}", f"{part}.bwd.{j}.convs.{bi}",
               f"{part}.blocks.{j}.convs.{4 * layer + 1}")
    new["head.weight"] = state["head.weight"][None]
    new["head.classifier.weight"] = state["head.classifier.weight"].t()[None].contiguous()
    new["head.classifier.bias"] = state["head.classifier.bias"][None]
    return new
