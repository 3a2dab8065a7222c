"""Backbones: feature extractors for speech, looked up by name.

    >>> import backbones
    >>> model = backbones.create("timnet", in_features=39, num_classes=6)

A backbone registers itself with :func:`register` in its own file; its options are a typed
dataclass, so an unknown option or a wrong type is an error naming the allowed ones. Every
backbone exposes ``general`` (stem + first ``split`` blocks), ``specific`` (the other blocks)
and ``head`` (scale fusion + classifier), and the methods ``forward_general``,
``forward_specific``, ``forward_features``, ``forward_head``, ``forward`` and ``reset_head``.

``create(name, runs=K, ...)`` builds K independent copies as one module (packed: every
parameter's first dimension holds the runs, see :mod:`backbones.layers`); inputs are then
(K, B, F, T) and outputs (K, B, classes). A backbone whose ``packable`` is false only builds
with ``runs = 1``.
"""

from __future__ import annotations

# Importing the modules registers them.
from backbones import timnet, transformer_timnet  # noqa: F401
from backbones.registry import (
    OptionError,
    _check_name,
    _describe,
    _type_ok,
    build_options,
    create,
    names,
    options_of,
    packable,
    register,
)

__all__ = ["OptionError", "_check_name", "_describe", "_type_ok", "build_options", "create",
           "names", "options_of", "packable", "register"]
