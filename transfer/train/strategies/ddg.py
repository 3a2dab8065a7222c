"""``ddg``: both domains pass through the target model's shared ``general``; two
domain-specific projectors map them into a common space where (1 - mu) * MMD + mu *
adversarial is minimised in an alignment phase (30 steps every 3 epochs, its own SGD optimiser
with a step schedule). ``specific`` + head get only the target cross-entropy.
The best row of the research log.

Not in the unlabelled mode: its alignment space is reached through two domain-specific
projectors, so aligning there does not bring the target's ``general`` features to where a
source-trained head reads them; with target labels the target's cross-entropy trains
``specific`` + head on the target's own features, without them nothing would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from transfer.common.options import LogUniform, Uniform, opt
from transfer.train.alignment import (
    DomainDiscriminator,
    GradientReversal,
    MultiKernelMMD,
    Projector,
    alignment_loss,
)
from transfer.train.strategies.base import Batch, Context, Phase, Strategy, ensure_split, register


@dataclass
class DdgOptions:
    """Args:
        mu: weight of the adversarial loss; the MMD gets 1 - mu.
        align_every, align_steps: the alignment phase (research defaults 3 and 30).
        align_lr, align_momentum: its SGD optimiser.
        align_step_size, align_gamma: its StepLR schedule, in epochs (research 30 / 0.3).
        proj_dim: width of the common space.
        proj_lr_scale: learning rate of the projectors relative to general and the
            discriminator. Both projectors start from the same weights; slow projectors make
            the shared general carry the alignment instead of the projectors absorbing it.
        init: the shared general starts from ``source`` (pretrained) or ``scratch``.
        mmd_kernels, mmd_ratio: the multi-kernel MMD's bandwidths.
    """

    mu: float = opt(0.2, ge=0, le=1, hint="the MMD gets 1 - mu", search=Uniform(0.0, 1.0))
    align_every: int = opt(3, ge=1)
    align_steps: int = opt(30, ge=1)
    align_lr: float = opt(0.01, gt=0, search=LogUniform(1e-3, 1e-1))
    align_momentum: float = opt(0.9, ge=0, lt=1)
    align_step_size: int = opt(30, ge=0, hint="0 turns the schedule off")
    align_gamma: float = opt(0.3, gt=0)
    proj_dim: int = opt(64, ge=1)
    proj_lr_scale: float = opt(0.1, gt=0, search=LogUniform(0.01, 1.0))
    init: Literal["source", "scratch"] = "source"
    mmd_kernels: int = opt(5, ge=1)
    mmd_ratio: float = opt(2.0, gt=0, per_run=False)  # sets the kernels' bandwidths at build


@register("ddg", order=60)
class Ddg(Strategy):
    """The target backbone trained on the target's cross-entropy, its shared ``general``
    aligned in a periodic phase through two domain-specific projectors."""

    Options = DdgOptions
    needs_source = True
    unlabelled_note = ("its two domain-specific projectors align a space the source-trained "
                       "head never reads")

    def __init__(self, ctx: Context, opts: DdgOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.target_model(opts.init)
        ensure_split(self.model, "ddg")
        c, k = self.model.sequence_dim, ctx.runs
        self.proj_source = Projector(c, opts.proj_dim, runs=k)
        self.proj_target = Projector(c, opts.proj_dim, runs=k)
        self.proj_target.load_state_dict(self.proj_source.state_dict())  # same starting map
        self.disc = DomainDiscriminator(opts.proj_dim, runs=k)
        self.grl = GradientReversal(1.0)
        self.mmd = MultiKernelMMD(opts.mmd_kernels, opts.mmd_ratio)

    def param_groups(self, lr: float) -> list[dict]:
        """The whole target model at ``lr`` (the target cross-entropy; projectors and the
        discriminator train in the alignment phase only)."""
        return [{"params": list(self.model.parameters()), "lr": lr}]

    def _align(self, tgt: Batch, src: Batch | None, progress: Tensor
               ) -> tuple[Tensor, dict[str, Tensor]]:
        assert src is not None
        p_s = self.proj_source(self.model.forward_general(src.x).sequence)
        p_t = self.proj_target(self.model.forward_general(tgt.x).sequence)
        mu = self.opts.mu
        return alignment_loss(self.mmd, self.disc, self.grl, p_s, p_t, progress, 1 - mu, mu)

    def phases(self) -> list[Phase]:
        """The ``align`` phase: ``align_steps`` SGD steps every ``align_every`` epochs on
        (1 - mu) MMD + mu adversarial loss; ``general`` and the discriminator at ``align_lr``,
        the projectors at ``align_lr x proj_lr_scale``."""
        o = self.opts
        shared = list(self.model.general.parameters()) + list(self.disc.parameters())
        projectors = (list(self.proj_source.encoder.parameters())
                      + list(self.proj_target.encoder.parameters()))
        groups = [{"params": shared, "lr": o.align_lr},
                  {"params": projectors, "lr": o.align_lr * o.proj_lr_scale}]
        return [Phase("align", self._align, groups, o.align_steps,
                      every=o.align_every, optimizer="sgd", lr=o.align_lr,
                      momentum=o.align_momentum, step_size=o.align_step_size,
                      gamma=o.align_gamma)]
