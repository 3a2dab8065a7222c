"""``dann``: domain-adversarial training (Ganin & Lempitsky 2015).

Target cross-entropy plus a domain discriminator on the pooled ``general`` features behind a
gradient reversal layer whose coefficient follows 2 / (1 + exp(-10 p)) - 1; optionally the
source emotion loss through a source branch.

Unlabelled target: the classifier is the target model itself with the pretrained source head
(the classes are the same), trained on the source's labels, and the adversarial loss aligns
the ``general`` features it reads: the original unsupervised DANN.

BatchNorm: source and target go through the shared ``general`` in two forward passes, so in
training each domain is normalised by its own batch statistics (the discriminator sees
per-domain-normalised features) while the running statistics, used in evaluation, average
both domains. Evaluation-mode target features therefore differ from those the target head was
trained on. One pass over the concatenated batch would need source and target segments of
the same length (the shipped recipes use 6 s and 10 s); left as is, and open (``joint`` and
``ddg``'s alignment phase do the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from transfer.common.options import Choice, LogUniform, opt
from transfer.train.alignment import DomainDiscriminator, GradientReversal, adversarial_loss
from transfer.train.strategies.base import Batch, Context, Strategy, ensure_split, register


@dataclass
class DannOptions:
    """Args:
        adv_weight: weight of the domain-adversarial loss.
        grl_max: the reversal coefficient's final value (the schedule is scaled by it).
        grl_gamma: steepness of the schedule (10 in the paper).
        source_weight: weight of the source emotion loss; 0 = off.
        disc_hidden: width of the discriminator.
        init: ``source`` or ``scratch``.
    """

    adv_weight: float = opt(1.0, ge=0, search=LogUniform(0.01, 10.0))
    grl_max: float = opt(1.0, gt=0, search=LogUniform(0.1, 1.0))
    grl_gamma: float = opt(10.0, gt=0, search=LogUniform(1.0, 30.0))
    # > 0 builds a source branch: a structural choice, so draws that differ in it never share
    # a pack
    source_weight: float = opt(0.0, ge=0, per_run=False)
    disc_hidden: int = opt(64, ge=1, search=Choice((32, 64, 128)))
    init: Literal["source", "scratch"] = "source"


@register("dann", order=40)
class Dann(Strategy):
    """One backbone for both domains, a domain discriminator on its pooled ``general``
    features behind a gradient reversal layer, and optionally a source branch."""

    Options = DannOptions
    needs_source = True
    uses_source_batches = True
    target_labels = "optional"

    def __init__(self, ctx: Context, opts: DannOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.target_model(opts.init)
        ensure_split(self.model, "dann")
        self.disc = DomainDiscriminator(self.model.general_dim, opts.disc_hidden, runs=ctx.runs)
        self.grl = GradientReversal(opts.grl_max, opts.grl_gamma)
        self.branch = self.source_branch() if opts.source_weight > 0 else None

    def param_groups(self, lr: float) -> list[dict]:
        """Every trainable parameter (model, discriminator, source branch) at ``lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the labelled batch plus ``adv_weight`` x the adversarial loss
        (plus ``source_weight`` x the source branch's cross-entropy), per run (K,); logs
        ``ce``, ``adv``, ``disc_acc`` (and ``ce_source``)."""
        assert src is not None
        g_t = self.model.forward_general(tgt.x)
        g_s = self.model.forward_general(src.x)
        labelled = self.labelled_batch(tgt, src)
        logits = self.model.head(self.model.forward_specific(g_t if labelled is tgt else g_s))
        ce = self.ce(logits, labelled.y)
        self.grl.progress = progress
        adv, acc = adversarial_loss(self.disc, self.grl(g_s.vector), self.grl(g_t.vector))
        total = ce + self.opts.adv_weight * adv
        logs = {"ce": ce.detach(), "adv": adv.detach(), "disc_acc": acc}
        if self.branch is not None:
            ce_s = self.ce(self.branch.head(self.branch.forward_specific(g_s)), src.y)
            total = total + self.opts.source_weight * ce_s
            logs["ce_source"] = ce_s.detach()
        return total, logs
