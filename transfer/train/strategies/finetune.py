"""``finetune``: as ``freeze``, but general trains at a smaller learning rate."""

from __future__ import annotations

from dataclasses import dataclass

from transfer.common.options import LogUniform, opt
from transfer.train.strategies.base import Context, Strategy, general_params, register, rest_params


@dataclass
class FinetuneOptions:
    """Args:
        general_lr_scale: learning rate of general relative to the rest (research code 0.1-0.2).
    """

    general_lr_scale: float = opt(0.1, gt=0, hint="0 would freeze general: use strategy freeze",
                                  search=LogUniform(0.01, 1.0))


@register("finetune", order=20)
class Finetune(Strategy):
    """The source-pretrained backbone with a fresh target head, ``general`` at a smaller
    learning rate."""

    Options = FinetuneOptions
    needs_source = True

    def __init__(self, ctx: Context, opts: FinetuneOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.target_model("source")

    def param_groups(self, lr: float) -> list[dict]:
        """``general`` at ``lr x general_lr_scale``, ``specific`` and the head at ``lr``."""
        return [{"params": general_params(self.model), "lr": lr * self.opts.general_lr_scale},
                {"params": rest_params(self.model), "lr": lr}]
