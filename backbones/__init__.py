"""Backbones: feature extractors for speech, looked up by name.

    >>> import backbones
    >>> model = backbones.create("timnet", in_features=39, num_classes=6)

A backbone registers itself with :func:`register` in its own file in this folder (found with
``pkgutil``, no list to keep); its options are a typed
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

import importlib
import pkgutil

from backbones.registry import (
    Backbone,
    OptionError,
    _check_name,
    build_options,
    create,
    names,
    options_of,
    packable,
    register,
)

# A backbone registers itself by being in this folder: importing its file registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "registry":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Backbone", "OptionError", "_check_name", "build_options", "create",
           "names", "options_of", "packable", "register"]
