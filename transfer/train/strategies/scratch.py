"""``scratch``: no source at all; the target model trains from random weights. The reference row."""

from __future__ import annotations

from dataclasses import dataclass

from transfer.train.strategies.base import Context, Strategy, register


@dataclass
class ScratchOptions:
    """No options."""


@register("scratch", order=0)
class Scratch(Strategy):
    """The target backbone from random weights, trained on the target's cross-entropy."""

    Options = ScratchOptions

    def __init__(self, ctx: Context, opts: ScratchOptions) -> None:
        super().__init__(ctx, opts)
        self.model = ctx.make_backbone(ctx.target_classes)
