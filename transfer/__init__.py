"""ser-transfer: transfer from emotional speech to depression detection.

The pipeline's stages are subpackages, bottom to top: ``transfer.common`` (config, caches,
console), ``backbones`` (a sibling package), ``transfer.data`` (cards -> manifests -> segments
-> cached features -> domains), ``transfer.evaluate`` (protocols, metrics, statistics,
diagnostics), ``transfer.train`` (engine, strategies, alignment, pretraining, model packages),
``transfer.grid`` (recipes, experiments, executors, records) and ``transfer.report`` (tables,
figures); the command-line tools (``python -m transfer.run`` ...) sit on top.

For notebooks, the names a researcher needs are importable from here (loaded on first use, so
``import transfer`` stays light): see the README's "Python API" section.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

#: The repository root (where ``datasets/`` and ``recipes/`` live in a checkout).
REPO_ROOT = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """An error caused by input the user controls (recipe, corpus, paths).

    Command-line entry points print its message without a traceback and exit with status 2.
    """


#: The Python API: public name -> the module that defines it.
_API = {
    "Domain": "transfer.data.domain", "load_domain": "transfer.data.domain",
    "Recipe": "transfer.common.config", "TrainConfig": "transfer.common.config",
    "ProtocolConfig": "transfer.common.config",
    "parse_recipe": "transfer.grid.recipe", "load_recipe": "transfer.grid.recipe",
    "Split": "transfer.evaluate.protocols", "make_splits": "transfer.evaluate.protocols",
    "classification": "transfer.evaluate.metrics", "unit_level": "transfer.evaluate.metrics",
    "get_strategy": "transfer.train.strategies", "strategy_names": "transfer.train.strategies",
    "Experiment": "transfer.grid.experiment", "RunSpec": "transfer.grid.experiment",
    "run_recipe": "transfer.run",
}
_RENAMED = {"strategy_names": "names"}

__all__ = ["REPO_ROOT", "UserError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
