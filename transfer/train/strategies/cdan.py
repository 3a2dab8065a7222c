"""``cdan``: conditional domain-adversarial training with entropy conditioning, CDAN+E (Long et
al. 2018).

Like ``dann``, a domain discriminator behind a gradient reversal layer, but it sees the
features the head classifies conditioned on the head's predictions (their outer product), so
that the class-conditional distributions are aligned, not only the marginal ones; CDAN+E
weights each segment by 1 + exp(-entropy) of its prediction (:func:`conditional_adversarial_loss`).
The condition needs one classifier for both domains, so ``cdan`` runs in the unlabelled mode
only: the target model keeps the pretrained source head and trains on the source's labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from transfer.common.options import Choice, LogUniform, opt
from transfer.train.alignment import (
    DomainDiscriminator,
    GradientReversal,
    conditional_adversarial_loss,
)
from transfer.train.strategies.base import Batch, Context, Strategy, register


@dataclass
class CdanOptions:
    """Args:
        adv_weight: weight of the conditional adversarial loss (>= 0; 0 = off).
        grl_max: the reversal coefficient's final value (the schedule of ``dann``).
        grl_gamma: steepness of the reversal schedule (10 in the paper).
        entropy_weight: CDAN+E's per-segment weights (false: plain CDAN).
        disc_hidden: width of the discriminator.
    """

    adv_weight: float = opt(1.0, ge=0, search=LogUniform(0.01, 10.0))
    grl_max: float = opt(1.0, gt=0, search=LogUniform(0.1, 1.0))
    grl_gamma: float = opt(10.0, gt=0, search=LogUniform(1.0, 30.0))
    entropy_weight: bool = True
    disc_hidden: int = opt(64, ge=1, search=Choice((32, 64, 128)))


@register("cdan", order=44)
class Cdan(Strategy):
    """The source-pretrained model (its source head kept) and a discriminator on the fused
    features conditioned on the predictions, behind a gradient reversal layer."""

    Options = CdanOptions
    needs_source = True
    uses_source_batches = True
    target_labels = "none"

    def __init__(self, ctx: Context, opts: CdanOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.source_model()
        in_dim = self.model.embed_dim * ctx.target_classes
        self.disc = DomainDiscriminator(in_dim, opts.disc_hidden, runs=ctx.runs)
        self.grl = GradientReversal(opts.grl_max, opts.grl_gamma)

    def param_groups(self, lr: float) -> list[dict]:
        """Every trainable parameter (model and discriminator) at ``lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Source cross-entropy plus ``adv_weight`` x the conditional adversarial loss, per
        run (K,); logs ``ce``, ``adv``, ``disc_acc``."""
        assert src is not None
        f_s = self.model.forward_features(src.x)  # (K, B, D)
        f_t = self.model.forward_features(tgt.x)
        logits_s, logits_t = self.model.forward_head(f_s), self.model.forward_head(f_t)
        ce = self.ce(logits_s, src.y)
        self.grl.progress = progress
        adv, acc = conditional_adversarial_loss(
            self.disc, self.grl, f_s, torch.softmax(logits_s.float(), -1), f_t,
            torch.softmax(logits_t.float(), -1), self.opts.entropy_weight)
        total = ce + self.opts.adv_weight * adv
        return total, {"ce": ce.detach(), "adv": adv.detach(), "disc_acc": acc}
