"""Transfer strategies, one class per file, registered by name.

A strategy builds its modules and parameter groups and says what one training step computes
(:meth:`Strategy.loss`); strategies with extra phases (alignment, autoencoder warm-up) describe
them as :class:`Phase` objects. The engine owns epochs, optimisers, schedules, evaluation,
model selection, device and precision, and never branches on a strategy's name.
"""

from __future__ import annotations

import importlib

from transfer.train.strategies.base import Batch, Context, Phase, Strategy, get_strategy, names, register

# Importing a module registers its strategy; this order is the order of tables and listings.
for _module in ("scratch", "freeze", "finetune", "joint", "dann", "mmd_ae", "ddg"):
    importlib.import_module(f"transfer.train.strategies.{_module}")

__all__ = ["Batch", "Context", "Phase", "Strategy", "get_strategy", "names", "register"]
