"""ser-transfer: transfer from emotional speech to depression detection.

The engine lives here: corpus cards -> manifests -> segments -> cached features
-> source pretraining -> transfer strategies -> subject-independent evaluation
-> comparison table. Backbones live in the sibling package ``backbones``.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (where ``datasets/`` and ``recipes/`` live in a checkout).
REPO_ROOT = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """An error caused by input the user controls (recipe, corpus, paths).

    Command-line entry points print its message without a traceback and exit with status 2.
    """
