"""Transfer strategies, one class per file in this folder, found and registered by name.

A strategy builds its modules and parameter groups and says what one training step computes
(:meth:`Strategy.loss`); strategies with extra phases (alignment, autoencoder warm-up) describe
them as :class:`Phase` objects. The engine owns epochs, optimisers, schedules, evaluation,
model selection, device and precision, and never branches on a strategy's name.
"""

from __future__ import annotations

import importlib
import pkgutil

from transfer.train.strategies.base import (
    Batch,
    Context,
    Phase,
    Strategy,
    check_label_mode,
    get_strategy,
    names,
    register,
)

# A strategy registers itself by being in this folder: importing its module registers it; its
# ``order`` (see :func:`register`) places it in tables and listings.
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Batch", "Context", "Phase", "Strategy", "check_label_mode", "get_strategy", "names",
           "register"]
