"""``source_only``: the unadapted source model, the reference row of the unlabelled mode.

The target model starts from the source-pretrained model with its head (the target's classes
are the source's) and goes on training on source batches with the source's labels alone: what
every unsupervised strategy adds to it (an alignment loss) is what it changes. It never reads
the target, so it runs only with ``[target] labelled = false``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from transfer.train.strategies.base import Batch, Context, Strategy, register


@dataclass
class SourceOnlyOptions:
    """No options."""


@register("source_only", order=5)
class SourceOnly(Strategy):
    """The source-pretrained model with its head, trained further on the source's labels."""

    Options = SourceOnlyOptions
    needs_source = True
    uses_source_batches = True
    target_labels = "none"

    def __init__(self, ctx: Context, opts: SourceOnlyOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.source_model()

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Source cross-entropy per run (K,); logs ``ce``. The target batch is unused."""
        assert src is not None
        ce = self.ce(self.model(src.x), src.y)
        return ce, {"ce": ce.detach()}
