"""``freeze``: general from the source-pretrained model, frozen (BatchNorm statistics too);
specific + a new head train on the target."""

from __future__ import annotations

from dataclasses import dataclass

from transfer.train.strategies.base import Context, Strategy, frozen, register, rest_params


@dataclass
class FreezeOptions:
    """No options."""


@register("freeze", order=10)
class Freeze(Strategy):
    """The source-pretrained backbone with ``general`` frozen and a fresh target head."""

    Options = FreezeOptions
    needs_source = True

    def __init__(self, ctx: Context, opts: FreezeOptions) -> None:
        super().__init__(ctx, opts)
        self.model = self.target_model("source")
        frozen(self.model.general)

    def train(self, mode: bool = True) -> Freeze:
        """Set the training mode, keeping ``general`` in eval mode; returns self."""
        super().train(mode)
        self.model.general.eval()  # BatchNorm running statistics stay those of the source
        return self

    def param_groups(self, lr: float) -> list[dict]:
        """``specific`` and the head at ``lr``; ``general`` is not optimised."""
        return [{"params": rest_params(self.model), "lr": lr}]
