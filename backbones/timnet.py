"""TIM-Net (Ye et al., ICASSP 2023) and its research variants, split into general/specific.

Per direction: a 1x1 convolution, then Temporal Aware Blocks (TABs) with dilations 1, 2, 4, ...
A TAB is two [causal dilated Conv1d (kernel 2) -> BatchNorm -> ReLU -> spatial dropout]
followed by a sigmoid gate multiplied with the block input. The backward direction runs on the
time-reversed input with its own weights. After every block the two directions are summed and
average-pooled over time (one vector per scale); a learned weight vector fuses the scales and a
linear layer classifies. With 39 features, 39 filters, 8 blocks and 6 classes the model has
104,456 trainable parameters, as the official Keras model.

Variants (options): ``residual`` mul|add, ``stem`` none|bn|bn_relu (a 1x1 conv + BatchNorm
[+ ReLU] in front), ``fusion`` weight|diff (DeltaTIM: differences of successive scales plus the
last one), ``attention`` none|mha (AT-TIM: causal multi-head attention after every block).

Split: ``general`` = stem + both input convs + the first ``split`` blocks of each direction;
``specific`` = the remaining blocks; ``head`` = scale fusion + classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from backbones import OptionError, register


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
    """

    in_features: int = 39
    num_classes: int = 2
    filters: int = 39
    blocks: int = 8
    kernel_size: int = 2
    dropout: float = 0.1
    split: int = 3
    residual: Literal["mul", "add"] = "mul"
    stem: Literal["none", "bn", "bn_relu"] = "none"
    fusion: Literal["weight", "diff"] = "weight"
    attention: Literal["none", "mha"] = "none"
    d_model: int = 128
    heads: int = 4
    bn_momentum: float = 0.1

    def validate(self) -> None:
        if not 0 <= self.split <= self.blocks:
            raise OptionError(f"split must be between 0 and blocks={self.blocks}, got {self.split}")
        if self.blocks < 1 or self.filters < 1 or self.in_features < 1 or self.num_classes < 1:
            raise OptionError("blocks, filters, in_features and num_classes must be positive")
        if self.attention == "mha" and self.d_model % self.heads:
            raise OptionError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")


class GeneralFeatures(NamedTuple):
    """Output of ``forward_general``.

    Shape:
        seq: (B, 2, C, T), the forward and the backward direction after the general blocks
            (the backward one in reversed time).
        pooled: (B, split, C), one time-averaged vector per general scale.
    """

    seq: Tensor
    pooled: Tensor


class CausalAttention(nn.Module):
    """Multi-head self-attention over time with a causal mask and a residual connection."""

    def __init__(self, channels: int, d_model: int, heads: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(channels, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.proj_out = nn.Linear(d_model, channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        h = self.proj_in(x.transpose(1, 2))  # (B, T, d)
        t = h.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        h, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        return x + self.proj_out(h).transpose(1, 2)


class TemporalAwareBlock(nn.Module):
    """Two causal dilated conv layers gating (or added to) the block input.

    Shape: (B, C, T) -> (B, C, T).
    """

    def __init__(self, channels: int, dilation: int, opts: TimNetOptions) -> None:
        super().__init__()
        self.pad = (opts.kernel_size - 1) * dilation
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.Conv1d(channels, channels, opts.kernel_size, dilation=dilation),
                       nn.BatchNorm1d(channels, eps=1e-3, momentum=opts.bn_momentum),
                       nn.ReLU(), nn.Dropout1d(opts.dropout)]
        self.convs = nn.ModuleList(layers)
        self.residual = opts.residual
        self.attention = (CausalAttention(channels, opts.d_model, opts.heads)
                          if opts.attention == "mha" else None)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for layer in self.convs:
            if isinstance(layer, nn.Conv1d):
                h = nn.functional.pad(h, (self.pad, 0))  # causal: only the past is seen
            h = layer(h)
        out = x * torch.sigmoid(h) if self.residual == "mul" else x + h
        return self.attention(out) if self.attention is not None else out


class Head(nn.Module):
    """Fuses per-scale vectors with learned weights and classifies.

    Shape: scales (B, S, C) -> fused (B, C) -> logits (B, num_classes).
    """

    def __init__(self, scales: int, channels: int, num_classes: int, fusion: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.weight = nn.Parameter(torch.full((scales,), 1.0 / scales))
        self.classifier = nn.Linear(channels, num_classes)

    def fuse(self, scales: Tensor) -> Tensor:
        if self.fusion == "diff":  # DeltaTIM: successive differences plus the last scale
            scales = torch.cat([scales[:, 1:] - scales[:, :-1], scales[:, -1:]], dim=1)
        return torch.einsum("bsc,s->bc", scales, self.weight)

    def forward(self, scales: Tensor) -> Tensor:
        return self.classifier(self.fuse(scales))


def make_stem(kind: str, in_features: int, channels: int, momentum: float) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    layers: list[nn.Module] = [nn.Conv1d(in_features, channels, 1),
                               nn.BatchNorm1d(channels, eps=1e-3, momentum=momentum)]
    if kind == "bn_relu":
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register("timnet", TimNetOptions)
class TimNet(nn.Module):
    """TIM-Net with a general/specific split (see the module docstring).

    Inputs: x (B, in_features, T), any T. Outputs: logits (B, num_classes).
    """

    options: TimNetOptions

    def __init__(self, opts: TimNetOptions) -> None:
        super().__init__()
        self.options = opts
        c, k = opts.filters, opts.split
        stem = self._make_stem(opts)
        stem_out = self._stem_features(opts)
        blocks = {d: [TemporalAwareBlock(c, 2 ** i, opts) for i in range(opts.blocks)]
                  for d in ("fwd", "bwd")}
        self.general = nn.ModuleDict({
            "stem": stem,
            "in_fwd": nn.Conv1d(stem_out, c, 1),
            "in_bwd": nn.Conv1d(stem_out, c, 1),
            "fwd": nn.ModuleList(blocks["fwd"][:k]),
            "bwd": nn.ModuleList(blocks["bwd"][:k]),
        })
        self.specific = nn.ModuleDict({"fwd": nn.ModuleList(blocks["fwd"][k:]),
                                       "bwd": nn.ModuleList(blocks["bwd"][k:])})
        self.head = Head(opts.blocks, c, opts.num_classes, opts.fusion)

    # Subclasses put other front ends in the stem.
    def _make_stem(self, opts: TimNetOptions) -> nn.Module:
        return make_stem(opts.stem, opts.in_features, opts.filters, opts.bn_momentum)

    def _stem_features(self, opts: TimNetOptions) -> int:
        return opts.in_features if opts.stem == "none" else opts.filters

    @property
    def embed_dim(self) -> int:
        return self.options.filters

    def forward_general(self, x: Tensor) -> GeneralFeatures:
        g = self.general
        h = g["stem"](x)  # (B, F', T)
        fwd, bwd = g["in_fwd"](h), g["in_bwd"](h.flip(-1))  # (B, C, T) each
        pooled = []
        for block_f, block_b in zip(g["fwd"], g["bwd"], strict=True):
            fwd, bwd = block_f(fwd), block_b(bwd)
            pooled.append((fwd + bwd).mean(-1))  # (B, C)
        b, c = x.shape[0], self.options.filters
        stacked = torch.stack(pooled, 1) if pooled else x.new_zeros(b, 0, c)
        return GeneralFeatures(torch.stack([fwd, bwd], 1), stacked)

    def forward_specific(self, g: GeneralFeatures) -> Tensor:
        """All per-scale vectors, general then specific: (B, blocks, C)."""
        fwd, bwd = g.seq[:, 0], g.seq[:, 1]
        pooled = [g.pooled]
        for block_f, block_b in zip(self.specific["fwd"], self.specific["bwd"], strict=True):
            fwd, bwd = block_f(fwd), block_b(bwd)
            pooled.append((fwd + bwd).mean(-1, keepdim=False).unsqueeze(1))
        return torch.cat(pooled, 1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The fused embedding: (B, C)."""
        return self.head.fuse(self.forward_specific(self.forward_general(x)))

    def forward_head(self, z: Tensor) -> Tensor:
        return self.head.classifier(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> None:
        """A fresh head for ``num_classes``; ``general`` and ``specific`` are untouched."""
        self.options.num_classes = num_classes
        device = self.head.weight.device
        self.head = Head(self.options.blocks, self.options.filters, num_classes,
                         self.options.fusion).to(device)
