"""What ``forward_general`` returns: the general features every backbone hands the strategies.

Every backbone's ``forward_general`` returns a :class:`GeneralFeatures`, whatever its family; the
strategies read only its two public views, and pass the whole object back to the backbone's
``forward_specific`` (the same backbone class: ``joint`` and ``dann`` run a source branch on the
target model's general features).

Layout, with K packed runs (K = 1 for an ordinary model), B segments, T' frames:

- ``vector`` (K, B, general_dim): one pooled vector per segment. ``dann`` puts its domain
  discriminator on it; the diagnostics (domain gap, PCA) compare it between corpora.
- ``sequence`` (K, sequence_dim, T', B): per-frame features, time-major with the batch last
  (the layout of :mod:`backbones.layers`), frame t of every channel at the same moment of the
  input (a bidirectional backbone stores its backward direction in forward time), so that a
  temporal convolution over it mixes neighbouring moments. ``mmd_ae`` and ``ddg`` project it
  into their alignment space. T' may differ from the input's T (a backbone that subsamples).
- ``state``: what the backbone's ``forward_specific`` continues from; private to the backbone
  (strategies never read it).

``general_dim`` and ``sequence_dim`` are the backbone's properties of the same names;
:func:`backbones.check_backbone` checks these shapes on a tiny input.

The two views are computed when first read (and then kept): a plain forward pass reads
neither, and a view can cost a copy of a whole activation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

View = Tensor | Callable[[], Tensor]  # a tensor, or a function that computes it once asked


class GeneralFeatures:
    """The general features of a batch (see the module docstring for the layout).

    Args:
        state: what ``forward_specific`` continues from (private to the backbone).
        vector: (K, B, general_dim), or a function without arguments that computes it.
        sequence: (K, sequence_dim, T', B), or a function without arguments that computes it.
    """

    __slots__ = ("_sequence", "_vector", "state")

    def __init__(self, state: Any, vector: View, sequence: View) -> None:
        self.state = state
        self._vector = vector
        self._sequence = sequence

    @property
    def vector(self) -> Tensor:
        """Pooled general features: (K, B, general_dim)."""
        if not isinstance(self._vector, Tensor):
            self._vector = self._vector()
        return self._vector

    @property
    def sequence(self) -> Tensor:
        """Per-frame general features in forward time, batch last: (K, sequence_dim, T', B)."""
        if not isinstance(self._sequence, Tensor):
            self._sequence = self._sequence()
        return self._sequence

    def __repr__(self) -> str:
        """The state's type only (the views may not be computed yet)."""
        return f"GeneralFeatures(state={type(self.state).__name__}, ...)"
