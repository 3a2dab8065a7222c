"""The strategy interface, shared helpers and the registry.

A strategy holds K packed runs (``ctx.runs``; K = 1 is one ordinary run): every module it
builds has the runs as its leading dimension (see :mod:`backbones.layers`), batches are
(K, B, ...) and every loss is one value per run, shape (K,). The engine sums the per-run
losses of the active runs, so each run's gradients are its own.

Target labels. With a labelled target (``Context.target_labelled``) the target has its own
classes and head. In the unlabelled mode the target's classes are the source's, the target
model keeps the pretrained source head, the engine's target labels are -1 (a loss that reads
them fails loudly) and the classifier learns from the source's labels. What a strategy needs
is its :attr:`Strategy.target_labels`; :func:`check_label_mode` refuses the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

from torch import Tensor, nn

from backbones.layers import repeat_state
from transfer import UserError


class Batch(NamedTuple):
    x: Tensor  # (K, B, F, T)
    y: Tensor  # (K, B)


@dataclass
class Context:
    """What a strategy gets from the engine to build itself.

    Args:
        backbone_factory: (num_classes, runs) -> a fresh backbone.
        target_classes, source_classes: class counts of the two tasks (0 = no source).
        pretrained: the source-pretrained backbone's state dict (one run, with its source
            head), or None.
        label_smoothing: for the cross-entropy losses.
        runs: K, how many runs the strategy packs.
        target_labelled: False in the unlabelled mode: the target's classes are the source's
            (``target_classes == source_classes``) and its labels are hidden from training.
    """

    backbone_factory: Callable[[int, int], nn.Module]
    target_classes: int
    source_classes: int = 0
    pretrained: dict[str, Tensor] | None = None
    label_smoothing: float = 0.0
    runs: int = 1
    target_labelled: bool = True

    def make_backbone(self, num_classes: int) -> nn.Module:
        return self.backbone_factory(num_classes, self.runs)

    def with_runs(self, runs: int) -> Context:
        return dataclasses.replace(self, runs=runs)

    def unlabelled(self) -> Context:
        """The same context in the unlabelled mode: the target's classes are the source's."""
        return dataclasses.replace(self, target_labelled=False, target_classes=self.source_classes)


@dataclass
class Phase:
    """An extra optimisation phase the engine runs with its own optimiser.

    ``every`` = M: run ``steps`` steps after every M-th epoch; ``every`` = 0: run once before
    training. The scheduler (StepLR, ``step_size`` epochs, ``gamma``) steps once per epoch.
    """

    name: str
    loss: Callable[[Batch, Batch | None, Tensor], tuple[Tensor, dict[str, Tensor]]]
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


def register(name: str, order: int = 1000) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy available by ``name``. ``order`` places it in tables and
    listings (ties keep the order of registration)."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        cls.order = order
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: _REGISTRY[n].order)  # stable: ties by registration


def get_strategy(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise UserError(f"unknown strategy {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def check_label_mode(cls: type[Strategy], labelled: bool, label: str = "") -> None:
    """Refuse, in one line, a strategy that cannot run with the target labelled or not; the
    message names the strategies that can."""
    label = label or cls.name
    if not labelled and cls.target_labels == "required":
        why = f" ({cls.unlabelled_note})" if cls.unlabelled_note else ""
        can = [n for n in names() if _REGISTRY[n].target_labels != "required"]
        raise UserError(f"strategy '{label}' trains on the target's labels, which [target] "
                        f"labelled = false hides{why}; strategies that can run unlabelled: "
                        f"{', '.join(can)}")
    if labelled and cls.target_labels == "none":
        can = [n for n in names() if _REGISTRY[n].target_labels != "none"]
        raise UserError(f"strategy '{label}' adapts the source's classifier to unlabelled target "
                        "audio: it needs [target] labelled = false, with the target's classes "
                        f"mapped onto the source's; with target labels use: {', '.join(can)}")


class Strategy(nn.Module):
    """Base class. Subclasses set ``Options`` (a dataclass), build ``self.model`` (the target
    backbone, ``ctx.runs`` packed runs) and implement :meth:`loss`.

    ``needs_source``: uses the source corpus (pretrained weights or source batches).
    ``uses_source_batches``: the engine passes a source batch to every step (a strategy may
    set it per instance, e.g. only in the unlabelled mode); a strategy without source batches
    and without phases is trained without any source data (source-free).
    ``target_labels``: ``required`` (it trains on the target's labels: not in the unlabelled
    mode; ``unlabelled_note`` says why where that is not obvious), ``optional`` (the target's
    cross-entropy with a labelled target, the source's through the source head without) or
    ``none`` (never reads them and classifies with the source's head: the unlabelled mode only).

    Every parameter a :meth:`param_groups` or :class:`Phase` optimiser owns must receive a
    gradient from that optimiser's loss at every step (the engine keeps one flat gradient
    buffer; a parameter outside the loss would see Adam steps from stale moments).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1000  # place in tables and listings (set by :func:`register`)
    Options: ClassVar[type]
    needs_source: ClassVar[bool] = False
    uses_source_batches: bool = False
    target_labels: ClassVar[Literal["required", "optional", "none"]] = "required"
    unlabelled_note: ClassVar[str] = ""
    model: nn.Module
    #: each run's options, set by :func:`transfer.train.packs.build_pack` (a pack rebuilt
    #: without its finished runs needs them)
    run_options: list[Any] | None = None

    def __init__(self, ctx: Context, opts: Any) -> None:
        super().__init__()
        check_label_mode(type(self), ctx.target_labelled)
        self.ctx, self.opts = ctx, opts

    # --- what subclasses provide -------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, tgt: Batch, src: Batch | None, progress: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step's loss per run, (K,), and values to log, each (K,); by default
        the target cross-entropy alone."""
        ce = self.ce(self.model(tgt.x), tgt.y)
        return ce, {"ce": ce.detach()}

    def phases(self) -> list[Phase]:
        return []

    # --- shared ----------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """Target logits: (K, B, F, T) -> (K, B, classes)."""
        return self.model(x)

    def general_embedding(self, x: Tensor) -> Tensor:
        """The target model's pooled ``general`` features, (K, B, general_dim)
        (:attr:`backbones.GeneralFeatures.vector`); for diagnostics."""
        return self.model.forward_general(x).vector

    def ce(self, logits: Tensor, y: Tensor, smoothing: float | None = None) -> Tensor:
        """Cross-entropy per run: logits (K, B, classes), y (K, B) -> (K,). ``smoothing``:
        label smoothing (default: the context's)."""
        k, b, c = logits.shape
        smoothing = self.ctx.label_smoothing if smoothing is None else smoothing
        loss = nn.functional.cross_entropy(logits.reshape(k * b, c).float(), y.reshape(-1),
                                           label_smoothing=smoothing, reduction="none")
        return loss.view(k, b).mean(1)

    def labelled_batch(self, tgt: Batch, src: Batch | None) -> Batch:
        """The batch whose labels train the classifier: the target's when it is labelled, the
        source's in the unlabelled mode (through the target model, whose head is then the
        source's)."""
        if self.ctx.target_labelled:
            return tgt
        assert src is not None, "the unlabelled mode needs source batches"
        return src

    def source_model(self) -> nn.Module:
        """A backbone with the source-pretrained weights (and its source head) in every run."""
        if self.ctx.pretrained is None:
            raise UserError(f"strategy '{self.name}' needs a source-pretrained model")
        model = self.ctx.make_backbone(self.ctx.source_classes)
        model.load_state_dict(repeat_state(self.ctx.pretrained, self.ctx.runs))
        return model

    def target_model(self, init: str = "source") -> nn.Module:
        """The target backbone: ``init = "source"`` copies the pretrained general and specific
        parts and attaches a fresh target head (in the unlabelled mode it keeps the source's
        head: the classes are the same); ``"scratch"`` starts from random weights."""
        if init == "scratch":
            return self.ctx.make_backbone(self.ctx.target_classes)
        model = self.source_model()
        if self.ctx.target_labelled:
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
    if model.general_dim < 1:
        raise UserError(f"strategy '{strategy}' aligns general features: backbone option "
                        "split must be at least 1")

