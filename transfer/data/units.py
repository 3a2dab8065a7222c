"""Decision units: what a label belongs to, and the check that the labels agree with it.

A unit is the ``subject`` (one label per person), the ``recording``/session or the
``segment`` (:data:`UNITS`). :func:`unit_ids` names every segment's unit; :func:`unit_labels`
gives each unit its one label and rejects units whose segments carry several (label-structure
checks are data validation: :mod:`transfer.data.domain` runs them when it loads a corpus; the
metrics and the protocols use the same functions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from transfer import UserError

UNITS = ("subject", "recording", "segment")


def unit_ids(kind: str, groups: np.ndarray, files: np.ndarray) -> np.ndarray:
    """The decision unit of every segment: its speaker, its recording (file path relative to
    the files' common folder) or the segment itself (``<recording>#<k>``)."""
    if kind not in UNITS:
        raise UserError(f"unit must be one of {list(UNITS)}, not {kind!r}")
    if kind == "subject":
        return np.asarray(groups).astype(str)
    files = np.asarray(files).astype(str)
    common = os.path.commonpath(list(set(files))) if len(files) else ""
    if len(set(files)) == 1:
        common = os.path.dirname(common)
    rel = np.array([os.path.relpath(f, common) if common else f for f in files])
    if kind == "recording":
        return rel
    k = pd.Series(rel).groupby(rel).cumcount().to_numpy()
    return np.char.add(np.char.add(rel, "#"), k.astype(str))


def unit_labels(units: np.ndarray, y: np.ndarray, kind: str = "unit",
                names: Sequence[str] | None = None, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The distinct units (sorted) and the one label of each.

    Raises :class:`UserError` naming the units whose segments carry several labels, with the
    count of each label. ``y``: class indices into ``names``, or label strings.
    """
    ids, inverse = np.unique(np.asarray(units), return_inverse=True)
    classes, yi = np.unique(np.asarray(y), return_inverse=True)
    counts = np.zeros((len(ids), len(classes)), np.int64)
    np.add.at(counts, (inverse.ravel(), yi.ravel()), 1)
    mixed = np.flatnonzero((counts > 0).sum(1) > 1)
    if mixed.size:
        def name(c: int) -> str:
            value = classes[c]
            return str(names[int(value)]) if names is not None and not isinstance(value, str) \
                else str(value)

        shown = "; ".join(f"{ids[i]} (" + ", ".join(f"{name(c)} {counts[i, c]}"
                                                   for c in np.flatnonzero(counts[i])) + ")"
                          for i in mixed[:6])
        more = f"; and {mixed.size - 6} more" if mixed.size > 6 else ""
        hint = (' If each recording has its own label, set unit = "recording" in the recipe\'s '
                "[target] (or in the card's [labels]); otherwise fix the labels."
                if kind == "subject" else "")
        raise UserError(f"{where}labels vary within {mixed.size} of {len(ids)} {kind}s, but "
                        f"the label is declared to belong to the {kind} (unit = \"{kind}\"): "
                        f"{shown}{more} (files or segments per label).{hint}")
    return ids, classes[counts.argmax(1)]
