"""``shot``: source-free adaptation, SHOT (Liang et al. 2020).

It starts from the source-pretrained model with its head (the target's classes are the
source's), freezes the head (the source hypothesis) and trains the feature extractor
(``general`` + ``specific``) on unlabelled target audio alone with

- information maximisation: low entropy of each prediction (confident) and high entropy of
  their mean (diverse: no collapse onto one class), and
- self-supervised pseudo-labels: every segment is labelled by the nearest class centroid of
  the target features (cosine distance), and the head is asked to agree
  (``pseudo_weight`` x cross-entropy).

It never reads source data: it has no source batches and no phases, so the engine trains it
without a source corpus at all (the experiment passes none; ``tests/test_unlabelled.py``
checks that). Only the pretrained weights come from the source.

SHOT computes the centroids once per epoch over the whole target set; here the engine streams
batches, so the centroids are a running average over batches (:class:`CentroidMemory`,
weighted by the predictions as in SHOT, then updated with momentum ``centroid_momentum``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbones.layers import RunModule, bmm
from transfer.common.options import Uniform, opt
from transfer.train.alignment import information_maximization
from transfer.train.strategies.base import Batch, Context, Strategy, frozen, register


class CentroidMemory(RunModule):
    """Running class centroids of L2-normalised features, per run, and the pseudo-labels they
    give (nearest centroid by cosine similarity).

    A batch's centroids are its features averaged with the predicted probabilities as weights
    (SHOT's first clustering step); a class's centroid moves towards them with ``momentum``
    when the batch holds at least half a segment's mass of it, and a run's first batch sets
    them. Only active runs update (the engine's run state), so a run's centroids are the same
    alone or in a pack.

    Shapes: features (K, B, D), probabilities (K, B, C) -> labels (K, B).
    """

    def __init__(self, runs: int, classes: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.runs, self.momentum = runs, momentum
        self.register_buffer("centroids", torch.zeros(runs, classes, dim + 1))
        self.register_buffer("seen", torch.zeros(runs))  # 1 once a run's first batch is in

    @torch.no_grad()
    def update_and_label(self, z: Tensor, p: Tensor) -> Tensor:
        """Update the active runs' centroids with this batch, then label each segment by its
        nearest centroid. Shape: z (K, B, D), p (K, B, C) -> (K, B) class indices."""
        # SHOT appends a constant 1 to the features before normalising
        f = nn.functional.normalize(torch.cat([z.float(), z.new_ones(*z.shape[:2], 1).float()],
                                              -1), dim=-1)  # (K, B, D + 1)
        p = p.float()
        mass = p.sum(1)  # (K, C)
        batch = bmm(p.transpose(1, 2), f) / mass.unsqueeze(-1).clamp_min(1e-8)  # (K, C, D + 1)
        first = self.seen.view(-1, 1, 1) == 0
        moved = self.centroids + self.momentum * (batch - self.centroids)
        has = (mass > 0.5).unsqueeze(-1)
        new = torch.where(has, torch.where(first, batch, moved), self.centroids)
        if self.run_state is not None:
            active = self.run_state.active.view(-1, 1, 1)
            new = torch.where(active, new, self.centroids)
            self.seen.copy_(torch.where(self.run_state.active, 1.0, self.seen))
        else:
            self.seen.fill_(1.0)
        self.centroids.copy_(new)
        sims = bmm(f, nn.functional.normalize(new, dim=-1).transpose(1, 2))  # (K, B, C)
        return sims.argmax(-1)


@dataclass
class ShotOptions:
    """Args:
        ent_weight: weight of the mean prediction entropy (>= 0; 1 in SHOT).
        div_weight: weight of the diversity term, the entropy of the mean prediction (>= 0; 1
            in SHOT).
        pseudo_weight: weight of the pseudo-label cross-entropy (>= 0; SHOT's beta, 0.3 for
            its digit and object benchmarks; 0 = SHOT-IM).
        centroid_momentum: how far a batch moves the running centroids, in (0, 1].
    """

    ent_weight: float = opt(1.0, ge=0)
    div_weight: float = opt(1.0, ge=0)
    pseudo_weight: float = opt(0.3, ge=0, search=Uniform(0.0, 1.0))
    # the running centroids' rate, a buffer's constant: draws that differ never share a pack
    centroid_momentum: float = opt(0.1, gt=0, le=1, per_run=False)


@register("shot", order=70)
class Shot(Strategy):
    """The source-pretrained model with its head frozen; ``general`` and ``specific`` adapt to
    the unlabelled target (see the module docstring)."""

    Options = ShotOptions
    needs_source = True
    uses_source_batches = False
    target_labels = "none"

    def __init__(self, ctx: Context, opts: ShotOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.source_model()
        frozen(self.model.head)  # the source hypothesis stays
        self.memory = CentroidMemory(ctx.runs, ctx.target_classes, self.model.embed_dim,
                                     opts.centroid_momentum)

    def train(self, mode: bool = True) -> Shot:
        """Set the training mode, keeping the frozen head in eval mode; returns self."""
        super().train(mode)
        self.model.head.eval()
        return self

    def param_groups(self, lr: float) -> list[dict]:
        """``general`` and ``specific`` at ``lr``; the head stays as the source trained it."""
        return [{"params": list(self.model.general.parameters())
                 + list(self.model.specific.parameters()), "lr": lr}]

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """``ent_weight`` x mean prediction entropy - ``div_weight`` x entropy of the mean
        prediction + ``pseudo_weight`` x pseudo-label cross-entropy on the target batch, per
        run (K,); logs ``ent``, ``div``, ``pseudo_ce``. ``src`` is unused."""
        z = self.model.forward_features(tgt.x)  # (K, B, D)
        logits = self.model.forward_head(z)  # (K, B, C)
        p = torch.softmax(logits.float(), -1)
        ent, div = information_maximization(p)
        labels = self.memory.update_and_label(z.detach(), p.detach())
        pseudo = self.ce(logits, labels, smoothing=0.0)
        o = self.opts
        total = o.ent_weight * ent - o.div_weight * div + o.pseudo_weight * pseudo
        return total, {"ent": ent.detach(), "div": div.detach(), "pseudo_ce": pseudo.detach()}
