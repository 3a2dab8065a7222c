"""``joint``: one shared general, two branches (source-specific + emotion head, target-specific
+ depression head) trained together on source and target batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from transfer.common.options import LogUniform, opt
from transfer.train.strategies.base import (
    Batch,
    Context,
    Strategy,
    general_params,
    register,
    rest_params,
)


@dataclass
class JointOptions:
    """Args:
        source_weight: weight of the source (emotion) loss.
        general_lr_scale: learning rate of the shared general (research code 0.1).
        source_lr_scale: learning rate of the source branch (research code 0.5).
        init: ``source`` (start from the pretrained model) or ``scratch``.
    """

    source_weight: float = opt(1.0, ge=0, search=LogUniform(0.1, 10.0))
    general_lr_scale: float = opt(0.1, gt=0, search=LogUniform(0.01, 1.0))
    source_lr_scale: float = opt(0.5, gt=0, search=LogUniform(0.05, 1.0))
    init: Literal["source", "scratch"] = "source"


@register("joint", order=30)
class Joint(Strategy):
    """One shared ``general``, a target branch and a pretrained source branch (specific +
    emotion head), trained together."""

    Options = JointOptions
    needs_source = True
    uses_source_batches = True

    def __init__(self, ctx: Context, opts: JointOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.target_model(opts.init)
        self.branch = self.source_branch()

    def param_groups(self, lr: float) -> list[dict]:
        """``general`` at ``lr x general_lr_scale``, the target's specific and head at ``lr``,
        the source branch at ``lr x source_lr_scale``."""
        return [{"params": general_params(self.model), "lr": lr * self.opts.general_lr_scale},
                {"params": rest_params(self.model), "lr": lr},
                {"params": list(self.branch.parameters()), "lr": lr * self.opts.source_lr_scale}]

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Target cross-entropy plus ``source_weight`` x the source branch's, per run (K,);
        logs ``ce``, ``ce_source``."""
        assert src is not None
        ce_t = self.ce(self.model(tgt.x), tgt.y)
        g_s = self.model.forward_general(src.x)
        ce_s = self.ce(self.branch.head(self.branch.forward_specific(g_s)), src.y)
        return ce_t + self.opts.source_weight * ce_s, {"ce": ce_t.detach(), "ce_source": ce_s.detach()}
