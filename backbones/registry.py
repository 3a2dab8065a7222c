"""The backbone registry: names -> (class, options dataclass), and the backbone contract
(:class:`Backbone`, checked by :func:`check_backbone`).

Options are checked by :mod:`transfer.common.options` (types, declared ranges, ``validate()``).
Backbone files import :func:`register` and :class:`OptionError` from here;
:mod:`backbones` re-exports everything and imports the backbone files.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from backbones.features import GeneralFeatures
from transfer.common.options import OptionError, build

_REGISTRY: dict[str, tuple[type, type]] = {}


class ContractError(TypeError):
    """A backbone that does not keep the :class:`Backbone` contract (a bug in its file)."""


def register(name: str, options: type) -> Callable[[type], type]:
    """Class decorator: make a backbone available to :func:`create` under ``name``.

    ``options`` is a dataclass whose fields (with types and defaults) are the backbone's options.
    """

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        if getattr(cls, "packable", False) and not hasattr(cls, "activation_bytes"):
            raise ContractError(f"backbone {name!r} is packable but has no "
                                "activation_bytes(opts, batch, frames) for pack sizing")
        _REGISTRY[name] = (cls, options)
        cls.registry_name = name
        return cls

    return deco


def names() -> list[str]:
    """Names of all registered backbones."""
    return sorted(_REGISTRY)


def options_of(name: str) -> type:
    """The options dataclass of a backbone."""
    _check_name(name)
    return _REGISTRY[name][1]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise OptionError(f"unknown backbone {name!r}; available: {', '.join(names())}")


def build_options(cls: type, values: dict[str, Any], what: str) -> Any:
    """Validate ``values`` against the options dataclass ``cls`` (types, declared ranges, its
    ``validate()``) and build it; ``what`` names the owner in errors."""
    return build(cls, values, what)


@typing.runtime_checkable
class Backbone(typing.Protocol):
    """What a backbone offers the strategies and the engine: the contract :func:`create`'s
    modules meet (:func:`check_backbone` checks it on a tiny input the first time a class is
    built).

    Shapes with K packed runs; a module built with ``runs = 1`` also takes unpacked inputs
    (B, F, T) and returns unpacked outputs. ``general`` (what is pretrained on the source and
    shared), ``specific`` (the task-specific rest) and ``head`` (what ``reset_head`` replaces)
    are the parameter groups strategies freeze, fine-tune or give their own learning rates;
    together they hold every parameter, each once. ``options`` is the options dataclass the
    module was built with (an exported model stores it); every options dataclass has the
    fields ``in_features`` and ``num_classes``, which the engine sets from the data.
    ``general_dim`` is the width of :attr:`GeneralFeatures.vector`, ``sequence_dim`` the
    channels of :attr:`GeneralFeatures.sequence`, ``embed_dim`` the width of
    :meth:`forward_features`.

    Besides the instance members, the class may define three hooks the registry calls before
    a model exists (:func:`options_for_features`, :func:`activation_bytes`,
    :func:`upgrade_state`); a packable backbone must define ``activation_bytes``.
    """

    runs: int
    packable: bool
    options: Any
    general: nn.Module
    specific: nn.Module
    head: nn.Module

    @property
    def general_dim(self) -> int:
        """Width of :attr:`GeneralFeatures.vector`."""

    @property
    def sequence_dim(self) -> int:
        """Channels of :attr:`GeneralFeatures.sequence`."""

    @property
    def embed_dim(self) -> int:
        """Width of :meth:`forward_features`."""

    def forward_general(self, x: Tensor) -> GeneralFeatures:
        """(K, B, F, T) -> the general features (:class:`GeneralFeatures`)."""

    def forward_specific(self, g: GeneralFeatures) -> Any:
        """General features -> what ``head`` classifies: ``head(forward_specific(g))`` is
        (K, B, classes). Its form is the backbone's own (TIM-Net: the per-scale vectors)."""

    def forward_features(self, x: Tensor) -> Tensor:
        """(K, B, F, T) -> (K, B, embed_dim): the embedding ``forward_head`` classifies."""

    def forward_head(self, z: Tensor) -> Tensor:
        """(K, B, embed_dim) -> (K, B, classes)."""

    def forward(self, x: Tensor) -> Tensor:
        """(K, B, F, T) -> (K, B, classes)."""

    def reset_head(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (transfer to another label set)."""


_MEMBERS = ("runs", "packable", "options", "general", "specific", "head", "general_dim",
            "sequence_dim", "embed_dim", "forward_general", "forward_specific",
            "forward_features", "forward_head", "forward", "reset_head")
_checked: set[type] = set()  # classes whose first model passed check_backbone


def check_backbone(model: nn.Module, batch: int = 2, frames: int = 8, name: str | None = None
                   ) -> None:
    """Check that ``model`` keeps the :class:`Backbone` contract, on a tiny fixed input.

    ``name`` (for the messages): the name it is registered under; by default the class's.

    The model runs in evaluation mode without gradients (its BatchNorm statistics do not move)
    and the input is not drawn from a random generator (the global seed is left as it is).

    Raises:
        ContractError: naming the backbone and the broken promise (a missing member, a
            ``forward_general`` that returns something else than :class:`GeneralFeatures`, a
            view or an output of the wrong shape).
    """
    name = name or getattr(model, "registry_name", type(model).__name__)
    missing = [m for m in _MEMBERS if not hasattr(model, m)]
    if missing:
        raise ContractError(f"backbone {name!r} lacks {', '.join(missing)} (see "
                            "backbones.Backbone)")
    k, classes = model.runs, model.options.num_classes
    n = k * batch * model.options.in_features * frames
    x = torch.linspace(-2.0, 2.0, n).sin().view(k, batch, model.options.in_features, frames)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            g = model.forward_general(x)
            if not isinstance(g, GeneralFeatures):
                raise ContractError(f"backbone {name!r}: forward_general must return "
                                    f"backbones.GeneralFeatures, got {type(g).__name__}")
            _expect(name, "GeneralFeatures.vector", g.vector, (k, batch, model.general_dim),
                    "(K, B, general_dim)")
            seq = g.sequence
            frames_out = seq.shape[2] if isinstance(seq, Tensor) and seq.dim() == 4 else 0
            _expect(name, "GeneralFeatures.sequence", seq,  # T' >= 1 frames, any number
                    (k, model.sequence_dim, frames_out or -1, batch),
                    "(K, sequence_dim, T', B)")
            _expect(name, "head(forward_specific(g))", model.head(model.forward_specific(g)),
                    (k, batch, classes), "(K, B, classes)")
            z = model.forward_features(x)
            _expect(name, "forward_features", z, (k, batch, model.embed_dim), "(K, B, embed_dim)")
            _expect(name, "forward_head", model.forward_head(z), (k, batch, classes),
                    "(K, B, classes)")
            _expect(name, "forward", model(x), (k, batch, classes), "(K, B, classes)")
    finally:
        model.train(was_training)


def _expect(name: str, what: str, value: Any, shape: tuple[int, ...], layout: str) -> None:
    got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
    if got != shape:
        raise ContractError(f"backbone {name!r}: {what} must be a tensor {layout} = {shape} "
                            f"here, got {got}")


def create(name: str, runs: int = 1, **options: Any) -> nn.Module:
    """Build a registered backbone with the given options (``runs`` copies packed in one).

    The first model of each class in a process is checked against the contract
    (:func:`check_backbone`)."""
    _check_name(name)
    cls, opts_cls = _REGISTRY[name]
    model = cls(build_options(opts_cls, options, f"backbone {name!r}"), runs=runs)
    if cls not in _checked:
        check_backbone(model, name=name)
        _checked.add(cls)
    return model


def packable(name: str) -> bool:
    """Whether ``name`` can build several runs as one module (``runs > 1``)."""
    _check_name(name)
    return bool(getattr(_REGISTRY[name][0], "packable", False))


# --- hooks the engine calls before a model exists -----------------------------------------------
def options_for_features(name: str, options: dict[str, Any], *, in_features: int,
                         stacked_layers: int = 0) -> dict[str, Any]:
    """A recipe's backbone options completed for input features of this shape.

    Args:
        name: the backbone.
        options: the recipe's options (not changed).
        in_features: F, the feature dimension of the input (set, whatever ``options`` says).
        stacked_layers: L > 0 when the features stack L self-supervised layers (F = L x dim);
            the backbone's class hook ``options_for_features`` decides what that sets (TIM-Net:
            ``layer_weights``); without the hook the L x dim channels are plain features.

    Raises:
        OptionError: options that contradict the features.
    """
    _check_name(name)
    hook = getattr(_REGISTRY[name][0], "options_for_features", None)
    if hook is None:
        return {**options, "in_features": in_features}
    return hook(dict(options), in_features, stacked_layers)


def activation_bytes(name: str, options: dict[str, Any], batch: int, frames: int) -> int:
    """Bytes of the largest activation tensor one run of the backbone holds in a training step
    on a batch of ``batch`` segments of ``frames`` frames, in float32: the class hook
    ``activation_bytes(opts, batch, frames)`` on the built options. Pack sizing reads it.

    Raises:
        OptionError: invalid options, or a backbone without the hook.
    """
    _check_name(name)
    cls, opts_cls = _REGISTRY[name]
    hook = getattr(cls, "activation_bytes", None)
    if hook is None:
        raise OptionError(f"backbone {name!r} does not say its activation size "
                          "(no activation_bytes)")
    return int(hook(build_options(opts_cls, options, f"backbone {name!r}"), batch, frames))


def upgrade_state(name: str, state: dict[str, Tensor], opts: Any) -> dict[str, Tensor]:
    """A state dict saved by an older version of the backbone in its current layout (the class
    hook ``upgrade_state(state, opts)``; without it, ``state`` unchanged). ``opts``: the
    model's options dataclass."""
    _check_name(name)
    hook = getattr(_REGISTRY[name][0], "upgrade_state", None)
    return state if hook is None else hook(state, opts)
