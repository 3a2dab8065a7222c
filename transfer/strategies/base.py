"""The strategy interface, shared helpers and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from transfer import UserError


class Batch(NamedTuple):
    x: Tensor  # (B, F, T)
    y: Tensor  # (B,)


@dataclass
class Context:
    """What a strategy gets from the engine to build itself.

    Args:
        make_backbone: a fresh backbone for a number of classes.
        target_classes, source_classes: class counts of the two tasks (0 = no source).
        pretrained: the source-pretrained backbone's state dict (with its source head), or None.
        label_smoothing: for the cross-entropy losses.
    """

    make_backbone: Callable[[int], nn.Module]
    target_classes: int
    source_classes: int = 0
    pretrained: dict[str, Tensor] | None = None
    label_smoothing: float = 0.0


@dataclass
class Phase:
    """An extra optimisation phase the engine runs with its own optimiser.

    ``every`` = M: run ``steps`` steps after every M-th epoch; ``every`` = 0: run once before
    training. The scheduler (StepLR, ``step_size`` epochs, ``gamma``) steps once per epoch.
    """

    name: str
    loss: Callable[[Batch, Batch | None, float], tuple[Tensor, dict[str, Tensor]]]
    params: list[dict[str, Any]]
    steps: int
    every: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    step_size: int = 0
    gamma: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy available by ``name``."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    return list(_REGISTRY)


def get_strategy(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise UserError(f"unknown strategy {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


class Strategy(nn.Module):
    """Base class. Subclasses set ``Options`` (a dataclass), build ``self.model`` (the target
    backbone) and implement :meth:`loss`.

    ``needs_source``: uses the source corpus (pretrained weights or source batches).
    ``uses_source_batches``: the engine passes a source batch to every step.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type]
    needs_source: ClassVar[bool] = False
    uses_source_batches: ClassVar[bool] = False
    model: nn.Module

    def __init__(self, ctx: Context, opts: Any) -> None:
        super().__init__()
        self.ctx, self.opts = ctx, opts

    # --- what subclasses provide -------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, tgt: Batch, src: Batch | None, progress: float
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step's loss; by default the target cross-entropy alone."""
        ce = self.ce(self.model(tgt.x), tgt.y)
        return ce, {"ce": ce.detach()}

    def phases(self) -> list[Phase]:
        return []

    # --- shared ----------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """Target logits."""
        return self.model(x)

    def general_embedding(self, x: Tensor) -> Tensor:
        """The target model's pooled ``general`` features, (B, split * C); for diagnostics."""
        return self.model.forward_general(x).pooled.flatten(1)

    def ce(self, logits: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.float(), y,
                                           label_smoothing=self.ctx.label_smoothing)

    def source_model(self) -> nn.Module:
        """A backbone with the source-pretrained weights (and its source head)."""
        if self.ctx.pretrained is None:
            raise UserError(f"strategy '{self.name}' needs a source-pretrained model")
        model = self.ctx.make_backbone(self.ctx.source_classes)
        model.load_state_dict(self.ctx.pretrained)
        return model

    def target_model(self, init: str = "source") -> nn.Module:
        """The target backbone: ``init = "source"`` copies the pretrained general and specific
        parts and attaches a fresh target head; ``"scratch"`` starts from random weights."""
        if init == "scratch":
            return self.ctx.make_backbone(self.ctx.target_classes)
        model = self.source_model()
        model.reset_head(self.ctx.target_classes)
        return model

    def source_branch(self) -> nn.Module:
        """Source-specific blocks + emotion head (pretrained), without a general part of their
        own: they run on the shared general features."""
        branch = self.source_model()
        del branch.general
        return branch


def general_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.general.parameters())


def rest_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.specific.parameters()) + list(model.head.parameters())


def frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def ensure_split(model: nn.Module, strategy: str) -> None:
    if model.options.split < 1:
        raise UserError(f"strategy '{strategy}' aligns general features: backbone option "
                        "split must be at least 1")
