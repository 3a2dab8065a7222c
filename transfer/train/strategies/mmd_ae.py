"""``mmd_ae`` (Multitrain_ae in the research code).

A frozen copy of the source-pretrained model gives source ``general`` features; the target
model's own ``general`` gives target features; ONE shared projector maps both into an
intermediate domain where MMD + an adversarial domain loss are minimised, in an alignment
phase of ``align_steps`` steps every ``align_every`` epochs. The projector can first be
pretrained as an autoencoder on source features (``ae_epochs``; 0 = off). The target
classifier trains with target cross-entropy in the ordinary steps.

Unlabelled target: the ordinary steps train the target model (with the pretrained source
head) on source batches and the source's labels; the alignment phase is unchanged. One shared
projector maps both domains, so aligning in its space moves the target model's ``general``
features of the target towards the source's, which the source-trained head reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from transfer.common.options import LogUniform, opt
from transfer.train.alignment import (
    DomainDiscriminator,
    GradientReversal,
    MultiKernelMMD,
    Projector,
    alignment_loss,
)
from transfer.train.strategies.base import (
    Batch,
    Context,
    Phase,
    Strategy,
    ensure_split,
    frozen,
    register,
)


@dataclass
class MmdAeOptions:
    """Args:
        align_every, align_steps: the alignment phase (research defaults 6 and 20).
        adv_weight: weight of the adversarial loss next to the MMD.
        proj_dim: width of the intermediate domain.
        ae_epochs: autoencoder pretraining of the projector on source features, in epochs of
            target-sized steps; 0 = off.
        align_lr: learning rate of the alignment optimiser (Adam).
        mmd_kernels, mmd_ratio: the multi-kernel MMD's bandwidths.
    """

    align_every: int = opt(6, ge=1)
    align_steps: int = opt(20, ge=1)
    adv_weight: float = opt(1.0, ge=0, search=LogUniform(0.01, 10.0))
    proj_dim: int = opt(64, ge=1)
    ae_epochs: int = opt(2, ge=0, hint="0 turns the autoencoder pretraining off")
    align_lr: float = opt(1e-3, gt=0, search=LogUniform(1e-4, 1e-2))
    mmd_kernels: int = opt(5, ge=1)
    mmd_ratio: float = opt(2.0, gt=0, per_run=False)  # sets the kernels' bandwidths at build


@register("mmd_ae", order=50)
class MmdAe(Strategy):
    """The target backbone, a frozen source-pretrained copy, one shared projector and a
    discriminator for the alignment phase (see the module docstring)."""

    Options = MmdAeOptions
    needs_source = True
    uses_source_batches = False  # source batches only in the phases (and, unlabelled, the steps)
    target_labels = "optional"

    def __init__(self, ctx: Context, opts: MmdAeOptions) -> None:
        super().__init__(ctx, opts)
        self.uses_source_batches = not ctx.target_labelled
        self.model = self.target_model("source")
        ensure_split(self.model, "mmd_ae")
        self.source = frozen(self.source_model())
        self.projector = Projector(self.model.sequence_dim, opts.proj_dim, runs=ctx.runs)
        self.disc = DomainDiscriminator(opts.proj_dim, runs=ctx.runs)
        self.grl = GradientReversal(1.0)
        self.mmd = MultiKernelMMD(opts.mmd_kernels, opts.mmd_ratio)

    def train(self, mode: bool = True) -> MmdAe:
        """Set the training mode, keeping the frozen source model in eval mode; returns self."""
        super().train(mode)
        self.source.eval()
        return self

    def param_groups(self, lr: float) -> list[dict]:
        """The whole target model at ``lr`` (the projector and the discriminator train in the
        phases only)."""
        return [{"params": list(self.model.parameters()), "lr": lr}]

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the labelled batch (target, or source when the target is
        unlabelled), per run (K,); logs ``ce``."""
        labelled = self.labelled_batch(tgt, src)
        ce = self.ce(self.model(labelled.x), labelled.y)
        return ce, {"ce": ce.detach()}

    def _autoencoder(self, tgt: Batch, src: Batch | None, progress: Tensor
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        assert src is not None
        seq = self.source.forward_general(src.x).sequence.detach()
        rec = self.projector.reconstruction_loss(seq)
        return rec, {"ae_rec": rec.detach()}

    def _align(self, tgt: Batch, src: Batch | None, progress: Tensor
               ) -> tuple[Tensor, dict[str, Tensor]]:
        assert src is not None
        p_s = self.projector(self.source.forward_general(src.x).sequence.detach())
        p_t = self.projector(self.model.forward_general(tgt.x).sequence)
        return alignment_loss(self.mmd, self.disc, self.grl, p_s, p_t, progress, 1.0,
                              self.opts.adv_weight)

    def phases(self) -> list[Phase]:
        """``align``: ``align_steps`` Adam steps every ``align_every`` epochs on MMD +
        ``adv_weight`` x adversarial loss, training the target's ``general``, the projector's
        encoder and the discriminator; with ``ae_epochs`` > 0 first ``autoencoder``, once
        before training: the projector as an autoencoder of source features."""
        o = self.opts
        align_params = (list(self.model.general.parameters())
                        + list(self.projector.encoder.parameters()) + list(self.disc.parameters()))
        phases = [Phase("align", self._align, [{"params": align_params}], o.align_steps,
                        every=o.align_every, optimizer="adam", lr=o.align_lr)]
        if o.ae_epochs > 0:
            phases.insert(0, Phase("autoencoder", self._autoencoder,
                                   [{"params": list(self.projector.parameters())}], 0, every=0,
                                   optimizer="adam", lr=o.align_lr,
                                   extra={"epochs": o.ae_epochs}))
        return phases
