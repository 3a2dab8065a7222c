"""``coral``: Deep CORAL (Sun & Saenko 2016): the classifier's loss plus the distance between
the covariances of source and target ``general`` features (:func:`coral_loss`).

With a labelled target the classifier's loss is the target cross-entropy and CORAL is an
alignment loss beside ``ddg``'s MMD (second-order statistics instead of a kernel embedding);
in the unlabelled mode it is the source cross-entropy through the target model, whose head is
the pretrained source head, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from transfer.common.options import LogUniform, opt
from transfer.train.alignment import coral_loss
from transfer.train.strategies.base import Batch, Context, Strategy, ensure_split, register


@dataclass
class CoralOptions:
    """Args:
        coral_weight: weight of the CORAL loss next to the cross-entropy (>= 0; 0 = off). The
            paper sets it so that both losses are of a size at the end of training; here 1,
            on standardised features whose covariances are O(1).
        init: ``source`` (pretrained general and specific) or ``scratch``.
    """

    coral_weight: float = opt(1.0, ge=0, search=LogUniform(0.1, 10.0))
    init: Literal["source", "scratch"] = "source"


@register("coral", order=42)
class Coral(Strategy):
    """One backbone for both domains; its ``general`` features are aligned by CORAL."""

    Options = CoralOptions
    needs_source = True
    uses_source_batches = True
    target_labels = "optional"

    def __init__(self, ctx: Context, opts: CoralOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.target_model(opts.init)
        ensure_split(self.model, "coral")

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the labelled batch (target, or source when the target is
        unlabelled) plus ``coral_weight`` x CORAL of the pooled ``general`` features, per run
        (K,); logs ``ce``, ``coral``."""
        assert src is not None
        g_t = self.model.forward_general(tgt.x)
        g_s = self.model.forward_general(src.x)
        labelled = self.labelled_batch(tgt, src)
        logits = self.model.head(self.model.forward_specific(g_t if labelled is tgt else g_s))
        ce = self.ce(logits, labelled.y)
        coral = coral_loss(g_s.vector, g_t.vector)
        return ce + self.opts.coral_weight * coral, {"ce": ce.detach(), "coral": coral.detach()}
