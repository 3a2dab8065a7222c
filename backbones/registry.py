"""The backbone registry: names -> (class, options dataclass).

Options are checked by :mod:`transfer.common.options` (types, declared ranges, ``validate()``).
Backbone files import :func:`register` and :class:`OptionError` from here;
:mod:`backbones` re-exports everything and imports the backbone files.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from transfer.common.options import OptionError, build

_REGISTRY: dict[str, tuple[type, type]] = {}


def register(name: str, options: type) -> Callable[[type], type]:
    """Class decorator: make a backbone available to :func:`create` under ``name``.

    ``options`` is a dataclass whose fields (with types and defaults) are the backbone's options.
    """

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
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
    """What a backbone offers the strategies (the contract :func:`create`'s modules meet).

    Shapes with K packed runs; a module built with ``runs = 1`` also takes unpacked inputs
    (B, F, T) and returns unpacked outputs. ``general`` (stem + first ``split`` blocks),
    ``specific`` (the other blocks) and ``head`` are the parameter groups strategies freeze,
    fine-tune or give their own learning rates; ``general_dim`` is the width of the pooled
    general features that alignment losses compare, ``sequence_dim`` the channel width of
    their per-frame form, ``embed_dim`` the width of :meth:`forward_features`.
    """

    runs: int
    packable: bool
    general: nn.Module
    specific: nn.Module
    head: nn.Module

    @property
    def general_dim(self) -> int: ...

    @property
    def sequence_dim(self) -> int: ...

    @property
    def embed_dim(self) -> int: ...

    def forward_general(self, x: Any) -> Any:
        """(K, B, F, T) -> the general features (what ``forward_specific`` continues from)."""

    def forward_specific(self, g: Any) -> Any:
        """General features -> (K, B, D) the features the head classifies."""

    def forward_features(self, x: Any) -> Any:
        """(K, B, F, T) -> (K, B, D): general then specific."""

    def forward_head(self, z: Any) -> Any:
        """(K, B, D) -> (K, B, classes)."""

    def forward(self, x: Any) -> Any:
        """(K, B, F, T) -> (K, B, classes)."""

    def reset_head(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (transfer to another label set)."""


def create(name: str, runs: int = 1, **options: Any) -> nn.Module:
    """Build a registered backbone with the given options (``runs`` copies packed in one)."""
    _check_name(name)
    cls, opts_cls = _REGISTRY[name]
    return cls(build_options(opts_cls, options, f"backbone {name!r}"), runs=runs)


def packable(name: str) -> bool:
    """Whether ``name`` can build several runs as one module (``runs > 1``)."""
    _check_name(name)
    return bool(getattr(_REGISTRY[name][0], "packable", False))
