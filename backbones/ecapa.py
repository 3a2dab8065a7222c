"""ECAPA-TDNN (Desplanques et al., Interspeech 2020), small, split into general/specific, with K
independent runs packed into one module.

Why this family as the second backbone: it differs from TIM-Net in every way the backbone
contract could quietly depend on, while working on the same frame features (MFCC, log-mel,
stacked self-supervised states). It is non-causal and has one direction (TIM-Net: causal, two
directions fused); its blocks are multi-scale Res2 convolutions with squeeze-excitation channel
attention (TIM-Net: gated dilated convolutions); it pools with learned attention over time into
a mean and a standard deviation, after aggregating every block's output (TIM-Net: per-scale
time means fused by learned weights); its head classifies an embedding. It is the standard
backbone of speaker and paralinguistic embeddings, so it is a reference point users know. And
it is built from the packed layers TIM-Net uses (:class:`~backbones.layers.TemporalConv`,
:class:`~backbones.layers.RunBatchNorm`, :class:`~backbones.layers.RunLinear`,
:class:`~backbones.layers.RunDropout`), so it packs K runs with exact per-run semantics
(counter-based dropout, per-run BatchNorm statistics) without new kernels; a 2-D CNN over
(features x frames) would have needed a packed 2-D convolution first.

Layers (defaults: 39 features, 64 filters, 3 blocks, 2 classes: 189,410 parameters):

- stem: Conv1d (kernel 5) -> BatchNorm -> ReLU;
- ``blocks`` SE-Res2 blocks, block i with dilation i + 2 (the paper's 2, 3, 4): 1x1 conv ->
  BatchNorm -> ReLU -> spatial dropout; Res2: the channels in ``scale`` groups, group j > 0
  through its own dilated conv -> BatchNorm -> ReLU after adding group j - 1's output; 1x1
  conv -> BatchNorm -> ReLU -> spatial dropout; squeeze-excitation; plus the block input;
- multi-layer feature aggregation: every block's output concatenated, a 1x1 conv -> BatchNorm
  -> ReLU;
- attentive statistics pooling (with the global context: every frame's attention also sees the
  utterance's mean and standard deviation) -> BatchNorm -> linear: the embedding;
- head: a linear classifier on the embedding.

Conv -> BatchNorm -> ReLU (not the paper's conv -> ReLU -> BatchNorm) lets the layers of the
filters' width use the fused BatchNorm + ReLU + dropout of :mod:`backbones.layers`.

Split: ``general`` = stem + the first ``split`` blocks; ``specific`` = the other blocks, the
aggregation, the pooling and the embedding; ``head`` = the classifier.

Shapes: ``forward`` takes (B, F, T) -> (B, classes), or packed (K, B, F, T) -> (K, B, classes).
Inside, sequences are time-major (K, C, T, B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from backbones import ssl_front
from backbones.features import GeneralFeatures
from backbones.layers import RunBatchNorm, RunDropout, RunLinear, TemporalConv
from backbones.registry import OptionError, register
from transfer.common.options import opt

STEM_KERNEL = 5  # the paper's first layer
STD_EPS = 1e-12  # variances are clamped here before the square root (whose gradient at 0 is inf)


@dataclass
class EcapaOptions:
    """Options of ``ecapa``.

    Args:
        in_features: feature dimension of the input (39 for MFCC-39).
        num_classes: classes of the head.
        filters: channels of the stem and of every block.
        blocks: number of SE-Res2 blocks (dilations 2, 3, ..., blocks + 1).
        split: how many blocks belong to ``general``; the rest are ``specific``.
        scale: Res2 groups per block (filters must divide by it).
        kernel_size: kernel of the Res2 convolutions (odd: centred, non-causal).
        se_channels: bottleneck of the squeeze-excitation.
        attention_channels: hidden width of the attentive pooling.
        embedding_dim: width of the embedding the head classifies.
        dropout: spatial dropout rate after the blocks' 1x1 convolutions (whole channels).
        bn_momentum: BatchNorm momentum (PyTorch convention).
        layer_weights: L > 0: the input stacks L self-supervised layers (in_features = L x dim)
            and a learned softmax-weighted sum over them precedes the stem, in ``general``; set
            automatically with features.kind = "ssl", layers = "all". 0 = off.
    """

    in_features: int = opt(39, ge=1)
    num_classes: int = opt(2, ge=1)
    filters: int = opt(64, ge=1)
    blocks: int = opt(3, ge=1)
    split: int = opt(2, ge=0)
    scale: int = opt(4, ge=2, hint="a Res2 block splits its channels into at least 2 groups")
    kernel_size: int = opt(3, ge=1)
    se_channels: int = opt(16, ge=1)
    attention_channels: int = opt(64, ge=1)
    embedding_dim: int = opt(128, ge=1)
    dropout: float = opt(0.1, ge=0, lt=1, per_run=False)  # one rate for the whole pack
    # 0 would freeze the running statistics at their start, 1 keeps only the last batch's
    bn_momentum: float = opt(0.1, gt=0, lt=1, per_run=False)
    layer_weights: int = opt(0, ge=0)

    def validate(self) -> None:
        """Cross-field rules (the single-field ranges are declared above; whether
        ``layer_weights`` divides the data's ``in_features`` is checked when the model is
        built)."""
        if self.split > self.blocks:
            raise OptionError(f"split must be between 0 and blocks={self.blocks}, got {self.split}")
        if self.filters % self.scale:
            raise OptionError(f"scale ({self.scale}) must divide filters ({self.filters})")
        if self.kernel_size % 2 == 0:
            raise OptionError(f"kernel_size must be odd (a centred kernel), got "
                              f"{self.kernel_size}")


class EcapaState(NamedTuple):
    """ECAPA's private part of :class:`GeneralFeatures` (what ``forward_specific`` reads).

    Shape:
        h: (K, C, T, B), the last general layer's output.
        blocks: the general blocks' outputs, each (K, C, T, B) (the aggregation reads them).
    """

    h: Tensor
    blocks: tuple[Tensor, ...]


class Stem(nn.Module):
    """(K, B, F, T) -> (K, C, T, B): Conv1d (kernel 5) -> BatchNorm -> ReLU, per run."""

    def __init__(self, runs: int, in_features: int, channels: int, momentum: float) -> None:
        super().__init__()
        self.conv = TemporalConv(runs, in_features, channels, STEM_KERNEL, causal=False)
        self.bn = RunBatchNorm(runs, runs * channels, momentum=momentum)
        self.drop = RunDropout(runs, 0.0)  # none: the fused BatchNorm + ReLU takes a dropout

    def forward(self, x: Tensor) -> Tensor:
        """(K, B, F, T) -> (K, C, T, B)."""
        x = x.permute(0, 2, 3, 1).contiguous()  # (K, F, T, B)
        return self.bn.conv_relu_dropout(self.conv, x, self.drop)


class Res2Conv(nn.Module):
    """The channels in ``scale`` groups; group 0 passes, group j > 0 goes through its own dilated
    conv -> BatchNorm -> ReLU after adding group j - 1's output (a growing receptive field).

    Shape: (K, C, T, B) -> (K, C, T, B).
    """

    def __init__(self, runs: int, channels: int, scale: int, kernel_size: int, dilation: int,
                 momentum: float) -> None:
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.convs = nn.ModuleList(TemporalConv(runs, width, width, kernel_size, dilation,
                                                causal=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(RunBatchNorm(runs, runs * width, momentum=momentum)
                                 for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:
        """(K, C, T, B) -> (K, C, T, B)."""
        groups = x.chunk(self.scale, 1)  # (K, C / scale, T, B) each
        out, y = [groups[0]], None
        for group, conv, bn in zip(groups[1:], self.convs, self.bns, strict=True):
            y = torch.relu(bn(conv(group if y is None else group + y)))
            out.append(y)
        return torch.cat(out, 1)


class SqueezeExcite(nn.Module):
    """Channel attention: every channel scaled by a gate computed from all channels' time means.

    Shape: (K, C, T, B) -> (K, C, T, B).
    """

    def __init__(self, runs: int, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = RunLinear(runs, channels, bottleneck)
        self.up = RunLinear(runs, bottleneck, channels)

    def forward(self, h: Tensor) -> Tensor:
        """(K, C, T, B) -> (K, C, T, B)."""
        s = h.mean(2).transpose(1, 2)  # (K, B, C)
        gate = torch.sigmoid(self.up(torch.relu(self.down(s))))  # (K, B, C)
        return h * gate.transpose(1, 2).unsqueeze(2)  # (K, C, 1, B) over time


class SERes2Block(nn.Module):
    """1x1 conv, Res2 convolutions, 1x1 conv, squeeze-excitation, plus the block input.

    Shape: (K, C, T, B) -> (K, C, T, B).
    """

    def __init__(self, runs: int, opts: EcapaOptions, dilation: int) -> None:
        super().__init__()
        c, m = opts.filters, opts.bn_momentum
        self.conv_in = TemporalConv(runs, c, c, 1, causal=False)
        self.bn_in = RunBatchNorm(runs, runs * c, momentum=m)
        self.drop_in = RunDropout(runs, opts.dropout)
        self.res2 = Res2Conv(runs, c, opts.scale, opts.kernel_size, dilation, m)
        self.conv_out = TemporalConv(runs, c, c, 1, causal=False)
        self.bn_out = RunBatchNorm(runs, runs * c, momentum=m)
        self.drop_out = RunDropout(runs, opts.dropout)  # a mask of its own (its own stream)
        self.se = SqueezeExcite(runs, c, opts.se_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(K, C, T, B) -> (K, C, T, B)."""
        h = self.bn_in.conv_relu_dropout(self.conv_in, x, self.drop_in)
        h = self.res2(h)
        h = self.bn_out.conv_relu_dropout(self.conv_out, h, self.drop_out)
        return x + self.se(h)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling with global context: per channel, a softmax over time of
    scores computed from each frame and from the utterance's mean and standard deviation; the
    weighted mean and standard deviation.

    The paper concatenates [h, mean, std] over every frame before the first 1x1 conv; here that
    conv is split into its frame part (``local``) and its constant part (``context``, added to
    every frame): the same maths without a (K, 3M, T, B) tensor.

    Shape: (K, M, T, B) -> (K, 2M, B).
    """

    def __init__(self, runs: int, channels: int, attention: int, momentum: float) -> None:
        super().__init__()
        self.local = TemporalConv(runs, channels, attention, 1, causal=False, bias=False)
        self.context = RunLinear(runs, 2 * channels, attention)
        self.bn = RunBatchNorm(runs, runs * attention, momentum=momentum)
        self.score = TemporalConv(runs, attention, channels, 1, causal=False)

    def forward(self, h: Tensor) -> Tensor:
        """(K, M, T, B) -> (K, 2M, B): the weighted mean and standard deviation."""
        mean = h.mean(2)  # (K, M, B)
        std = (h - mean.unsqueeze(2)).square().mean(2).clamp_min(STD_EPS).sqrt()
        ctx = self.context(torch.cat([mean, std], 1).transpose(1, 2))  # (K, B, A)
        a = self.local(h) + ctx.transpose(1, 2).unsqueeze(2)  # (K, A, T, B)
        a = torch.tanh(self.bn(torch.relu(a)))
        w = torch.softmax(self.score(a), dim=2)  # (K, M, T, B), over time
        mu = (w * h).sum(2)  # (K, M, B)
        var = (w * (h - mu.unsqueeze(2)).square()).sum(2)
        return torch.cat([mu, var.clamp_min(STD_EPS).sqrt()], 1)  # (K, 2M, B)


@register("ecapa", EcapaOptions)
class Ecapa(nn.Module):
    """A small ECAPA-TDNN with a general/specific split (see the module docstring).

    Args:
        opts: the options.
        runs: K, how many independent copies this module trains at once.
    """

    options: EcapaOptions
    packable = True  # every layer has a per-run form

    def __init__(self, opts: EcapaOptions, runs: int = 1) -> None:
        super().__init__()
        self.options, self.runs = opts, runs
        c, m, k = opts.filters, opts.bn_momentum, runs
        blocks = [SERes2Block(runs, opts, dilation=i + 2) for i in range(opts.blocks)]
        aggregated = opts.blocks * c  # M: every block's output, concatenated
        self.general = nn.ModuleDict({
            "stem": ssl_front.make_stem(
                lambda o: Stem(runs, o.in_features, c, m), opts, runs),
            "blocks": nn.ModuleList(blocks[:opts.split]),
        })
        self.specific = nn.ModuleDict({
            "blocks": nn.ModuleList(blocks[opts.split:]),
            "aggregate": TemporalConv(k, aggregated, aggregated, 1, causal=False),
            "aggregate_bn": RunBatchNorm(k, k * aggregated, momentum=m),
            "pool": AttentiveStatsPool(k, aggregated, opts.attention_channels, m),
            "pool_bn": RunBatchNorm(k, k * 2 * aggregated, momentum=m),
            "embed": RunLinear(k, 2 * aggregated, opts.embedding_dim),
        })
        self.head = RunLinear(runs, opts.embedding_dim, opts.num_classes)

    # --- the registry's hooks (before a model exists) ------------------------------------------
    @classmethod
    def options_for_features(cls, options: dict[str, Any], in_features: int,
                             stacked_layers: int) -> dict[str, Any]:
        """Stacked self-supervised layers set ``layer_weights`` (:mod:`backbones.ssl_front`)."""
        return ssl_front.stacked_layer_options(options, in_features, stacked_layers)

    @staticmethod
    def activation_bytes(opts: EcapaOptions, batch: int, frames: int) -> int:
        """The largest of: the aggregated blocks (blocks x filters channels, also the
        attention weights' width), the attention's hidden layer and the input batch; float32."""
        widths = (opts.blocks * opts.filters, opts.attention_channels, opts.in_features)
        return 4 * batch * frames * max(widths)

    # --- the contract ----------------------------------------------------------------------------
    @property
    def general_dim(self) -> int:
        """Width of :attr:`GeneralFeatures.vector`: split x filters."""
        return self.options.split * self.options.filters

    @property
    def sequence_dim(self) -> int:
        """Channels of :attr:`GeneralFeatures.sequence`: filters."""
        return self.options.filters

    @property
    def embed_dim(self) -> int:
        """Width of the embedding (:meth:`forward_features`)."""
        return self.options.embedding_dim

    def forward_general(self, x: Tensor) -> GeneralFeatures:
        """x: (K, B, F, T) (or (B, F, T) for K = 1). ``vector``: the general blocks' time means,
        (K, B, split C); ``sequence``: the last general layer's output, (K, C, T, B);
        ``state``: an :class:`EcapaState`."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        h = self.general["stem"](x)  # (K, C, T, B)
        outs = []
        for block in self.general["blocks"]:
            h = block(h)
            outs.append(h)
        k, b = x.shape[0], x.shape[1]

        def vector() -> Tensor:
            if not outs:
                return h.new_zeros(k, b, 0)
            means = torch.stack([o.mean(2) for o in outs], 1)  # (K, split, C, B)
            return means.permute(0, 3, 1, 2).reshape(k, b, -1)

        return GeneralFeatures(EcapaState(h, tuple(outs)), vector=vector, sequence=h)

    def forward_specific(self, g: GeneralFeatures) -> Tensor:
        """The embedding: (K, B, embedding_dim)."""
        h, outs = g.state.h, list(g.state.blocks)
        s = self.specific
        for block in s["blocks"]:
            h = block(h)
            outs.append(h)
        agg = torch.relu(s["aggregate_bn"](s["aggregate"](torch.cat(outs, 1))))  # (K, M, T, B)
        stats = s["pool_bn"](s["pool"](agg))  # (K, 2M, B)
        return s["embed"](stats.transpose(1, 2))  # (K, B, E)

    def forward_features(self, x: Tensor) -> Tensor:
        """The embedding: (K, B, E), or (B, E) for a (B, F, T) input."""
        z = self.forward_specific(self.forward_general(x))
        return z[0] if x.dim() == 3 else z

    def forward_head(self, z: Tensor) -> Tensor:
        """(K, B, E) -> (K, B, classes), or (B, E) -> (B, classes)."""
        return self.head(z.unsqueeze(0))[0] if z.dim() == 2 else self.head(z)

    def forward(self, x: Tensor) -> Tensor:
        """(K, B, F, T) -> (K, B, classes), or (B, F, T) -> (B, classes)."""
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes``; ``general`` and ``specific`` are untouched."""
        self.options.num_classes = num_classes
        self.head = RunLinear(self.runs, self.options.embedding_dim,
                              num_classes).to(self.head.weight.device)
