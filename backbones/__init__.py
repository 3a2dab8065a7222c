"""Backbones: feature extractors for speech, looked up by name.

    >>> import backbones
    >>> model = backbones.create("timnet", in_features=39, num_classes=6)

A backbone registers itself with :func:`register` in its own file in this folder (found with
``pkgutil``, no list to keep); its options are a typed
dataclass, so an unknown option or a wrong type is an error naming the allowed ones. Every
backbone keeps the contract :class:`Backbone` (checked by :func:`check_backbone` the first time
a class is built): ``general`` (what is pretrained and shared), ``specific`` (the task-specific
rest) and ``head``, and the methods ``forward_general`` (which returns a
:class:`GeneralFeatures`, :mod:`backbones.features`), ``forward_specific``,
``forward_features``, ``forward_head``, ``forward`` and ``reset_head``. What the engine needs
to know before a model exists goes through the registry: :func:`options_for_features` (options
for features of a given shape), :func:`activation_bytes` (pack sizing) and
:func:`upgrade_state` (older saved states).

Two families: TIM-Net (``timnet``, ``transformer_timnet``) and ECAPA-TDNN (``ecapa``).

``create(name, runs=K, ...)`` builds K independent copies as one module (packed: every
parameter's first dimension holds the runs, see :mod:`backbones.layers`); inputs are then
(K, B, F, T) and outputs (K, B, classes). A backbone whose ``packable`` is false only builds
with ``runs = 1``.
"""

from __future__ import annotations

import importlib
import pkgutil

from backbones.features import GeneralFeatures
from backbones.registry import (
    Backbone,
    ContractError,
    OptionError,
    _check_name,
    activation_bytes,
    build_options,
    check_backbone,
    create,
    names,
    options_for_features,
    options_of,
    packable,
    register,
    upgrade_state,
)

# A backbone registers itself by being in this folder: importing its file registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("registry", "features"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Backbone", "ContractError", "GeneralFeatures", "OptionError", "_check_name",
           "activation_bytes", "build_options", "check_backbone", "create", "names",
           "options_for_features", "options_of", "packable", "register", "upgrade_state"]
