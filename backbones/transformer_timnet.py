"""Transformer-TIM / Transformer-DeltaTIM: a Transformer encoder in front of TIM-Net.

The encoder (input projection, sinusoidal positions, ``tf_layers`` encoder layers) is the stem,
so it belongs to ``general``. With ``fusion = "diff"`` this is Transformer-DeltaTIM.

The encoder has no grouped form here, so this backbone is not packable: the engine trains its
runs one at a time (``runs = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbones.registry import OptionError, register
from backbones.timnet import TimNet, TimNetOptions
from transfer.common.options import opt


@dataclass
class TransformerTimNetOptions(TimNetOptions):
    """``timnet`` options plus the encoder's.

    Args:
        tf_dim: encoder width (the features TIM-Net then sees).
        tf_layers, tf_heads, tf_ff, tf_dropout: encoder depth, heads, feed-forward width, dropout.
    """

    tf_dim: int = opt(64, ge=1)
    tf_layers: int = opt(2, ge=1)
    tf_heads: int = opt(4, ge=1)
    tf_ff: int = opt(128, ge=1)
    tf_dropout: float = opt(0.1, ge=0, lt=1, per_run=False)

    def validate(self) -> None:
        """TIM-Net's cross-field rules, and ``tf_dim`` divisible by ``tf_heads``."""
        super().validate()
        if self.tf_dim % self.tf_heads:
            raise OptionError(f"tf_dim ({self.tf_dim}) must be divisible by tf_heads "
                              f"({self.tf_heads})")


class TransformerFront(nn.Module):
    """Shape: (1, B, F, T) -> (1, tf_dim, T, B) (one run: the packed layout with K = 1)."""

    def __init__(self, opts: TransformerTimNetOptions) -> None:
        super().__init__()
        self.proj = nn.Linear(opts.in_features, opts.tf_dim)
        layer = nn.TransformerEncoderLayer(opts.tf_dim, opts.tf_heads, opts.tf_ff,
                                           opts.tf_dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, opts.tf_layers, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:
        """Project, add sinusoidal positions, encode. Shape: (1, B, F, T) -> (1, tf_dim, T, B);
        a packed input (K > 1) raises ValueError."""
        if x.shape[0] != 1:
            raise ValueError("transformer_timnet is not packable: one run at a time")
        h = self.proj(x[0].transpose(1, 2))  # (B, T, d)
        t, d = h.shape[1], h.shape[2]
        pos = torch.arange(t, device=x.device, dtype=h.dtype).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d, 2, device=x.device, dtype=h.dtype)
                         * (-math.log(10000.0) / d))
        pe = torch.zeros(t, d, device=x.device, dtype=h.dtype)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
        return self.encoder(h + pe).permute(2, 1, 0).unsqueeze(0).contiguous()  # (1, d, T, B)


@register("transformer_timnet", TransformerTimNetOptions)
class TransformerTimNet(TimNet):
    """Transformer encoder -> TIM-Net. Inputs (B, in_features, T); outputs (B, num_classes)."""

    packable = False

    def __init__(self, opts: TimNetOptions, runs: int = 1) -> None:
        if runs != 1:
            raise OptionError("transformer_timnet is not packable: build it with runs = 1")
        super().__init__(opts, runs)

    def _make_stem(self, opts: TimNetOptions) -> nn.Module:
        assert isinstance(opts, TransformerTimNetOptions)
        return TransformerFront(opts)

    def _stem_features(self, opts: TimNetOptions) -> int:
        assert isinstance(opts, TransformerTimNetOptions)
        return opts.tf_dim
