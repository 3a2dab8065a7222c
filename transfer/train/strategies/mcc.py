"""``mcc``: minimum class confusion (Jin et al. 2020): the classifier's loss plus the
confusion between classes in the target's predictions (:func:`mcc_loss`), which pushes every
target segment towards one class without reading a target label.

With a labelled target: the target cross-entropy + MCC on the same target batch (no source
batches). In the unlabelled mode: the source cross-entropy through the target model (the
pretrained source head) + MCC on a target batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from transfer.common.options import LogUniform, Uniform, opt
from transfer.train.alignment import mcc_loss
from transfer.train.strategies.base import Batch, Context, Strategy, register


@dataclass
class MccOptions:
    """Args:
        mcc_weight: weight of the class-confusion loss (>= 0; 0 = off; 1 in the paper).
        temperature: rescales the logits before the confusion (> 0; 2.5 in the paper).
        init: ``source`` (pretrained general and specific) or ``scratch``.
    """

    mcc_weight: float = opt(1.0, ge=0, search=LogUniform(0.1, 10.0))
    temperature: float = opt(2.5, gt=0, search=Uniform(1.0, 5.0))
    init: Literal["source", "scratch"] = "source"


@register("mcc", order=65)
class Mcc(Strategy):
    """The target backbone trained on the cross-entropy of the labelled batch plus minimum
    class confusion on the target's predictions."""

    Options = MccOptions
    needs_source = True
    target_labels = "optional"

    def __init__(self, ctx: Context, opts: MccOptions) -> None:
        super().__init__(ctx, opts)
        self.uses_source_batches = not ctx.target_labelled
        self.model = self.target_model(opts.init)

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the labelled batch (target, or source when the target is
        unlabelled) plus ``mcc_weight`` x the target's class confusion, per run (K,); logs
        ``ce``, ``mcc``."""
        logits_t = self.model(tgt.x)  # (K, B, C)
        labelled = self.labelled_batch(tgt, src)
        ce = self.ce(logits_t if labelled is tgt else self.model(labelled.x), labelled.y)
        mcc = mcc_loss(logits_t, self.opts.temperature)
        return ce + self.opts.mcc_weight * mcc, {"ce": ce.detach(), "mcc": mcc.detach()}
