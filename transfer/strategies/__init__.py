"""Transfer strategies, one class per file, registered by name.

A strategy builds its modules and parameter groups and says what one training step computes
(:meth:`Strategy.loss`); strategies with extra phases (alignment, autoencoder warm-up) describe
them as :class:`Phase` objects. The engine owns epochs, optimisers, schedules, evaluation,
model selection, device and precision, and never branches on a strategy's name.
"""

from __future__ import annotations

# Importing the modules registers them.
from transfer.strategies import dann, ddg, finetune, freeze, joint, mmd_ae, scratch  # noqa: E402,F401,I001
from transfer.strategies.base import Batch, Context, Phase, Strategy, get_strategy, names, register

__all__ = ["Batch", "Context", "Phase", "Strategy", "get_strategy", "names", "register"]
