"""``scratch``: no source at all; the target model trains from random weights. The reference row."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from transfer.strategies.base import Batch, Context, Strategy, register


@dataclass
class ScratchOptions:
    """No options."""


@register("scratch")
class Scratch(Strategy):
    Options = ScratchOptions

    def __init__(self, ctx: Context, opts: ScratchOptions) -> None:
        super().__init__(ctx, opts)
        self.model = ctx.make_backbone(ctx.target_classes)

    def loss(self, tgt: Batch, src: Batch | None, progress: float
             ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = self.ce(self.model(tgt.x), tgt.y)
        return ce, {"ce": ce.detach()}
