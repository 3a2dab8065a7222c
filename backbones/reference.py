"""TIM-Net written the plain way: per direction and block two ``nn.Conv1d`` and two
``nn.BatchNorm1d``, one model per run (the layout of ser-transfer 0.1 and of the research code).

Not registered as a backbone: it is the reference that the fused, packable ``timnet`` is tested
against (same maths, see :func:`backbones.timnet.upgrade_state` for the weights), and the model
of the benchmark's reference training loop.

Shape: (B, F, T) -> (B, classes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ReferenceTab(nn.Module):
    """One Temporal Aware Block of one direction. Shape: (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, dilation: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pad = dilation
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.Conv1d(channels, channels, 2, dilation=dilation),
                       nn.BatchNorm1d(channels, eps=1e-3), nn.ReLU(), nn.Dropout1d(dropout)]
        self.convs = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x * sigmoid(convs(x))``, the convolutions causal. Shape: (B, C, T) -> (B, C, T)."""
        h = x
        for layer in self.convs:
            if isinstance(layer, nn.Conv1d):
                h = nn.functional.pad(h, (self.pad, 0))  # causal
            h = layer(h)
        return x * torch.sigmoid(h)


class ReferenceTimNet(nn.Module):
    """The unfused TIM-Net (``stem``: none or "bn"; ``residual`` mul, ``fusion`` weight)."""

    def __init__(self, in_features: int = 39, filters: int = 39, blocks: int = 8,
                 split: int = 3, num_classes: int = 2, dropout: float = 0.1,
                 stem: str = "none") -> None:
        super().__init__()
        c = filters
        stem_mod: nn.Module = nn.Identity()
        width = in_features
        if stem == "bn":
            stem_mod, width = nn.Sequential(nn.Conv1d(in_features, c, 1),
                                            nn.BatchNorm1d(c, eps=1e-3)), c
        self.general = nn.ModuleDict({
            "stem": stem_mod, "in_fwd": nn.Conv1d(width, c, 1), "in_bwd": nn.Conv1d(width, c, 1),
            "fwd": nn.ModuleList(ReferenceTab(c, 2 ** i, dropout) for i in range(split)),
            "bwd": nn.ModuleList(ReferenceTab(c, 2 ** i, dropout) for i in range(split))})
        self.specific = nn.ModuleDict({
            "fwd": nn.ModuleList(ReferenceTab(c, 2 ** i, dropout) for i in range(split, blocks)),
            "bwd": nn.ModuleList(ReferenceTab(c, 2 ** i, dropout) for i in range(split, blocks))})
        self.head = nn.Module()
        self.head.weight = nn.Parameter(torch.full((blocks,), 1.0 / blocks))
        self.head.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits. Shape: x (B, F, T) -> (B, classes)."""
        h = self.general["stem"](x)
        fwd, bwd = self.general["in_fwd"](h), self.general["in_bwd"](h.flip(-1))
        pooled = []
        for part in (self.general, self.specific):
            for block_f, block_b in zip(part["fwd"], part["bwd"], strict=True):
                fwd, bwd = block_f(fwd), block_b(bwd)
                pooled.append((fwd + bwd).mean(-1))  # (B, C)
        fused = torch.einsum("sbc,s->bc", torch.stack(pooled), self.head.weight)
        return self.head.classifier(fused)
