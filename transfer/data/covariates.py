"""Subject covariates (gender, age, ...) read from a corpus' subject table, for subgroup reports.

A card names them in a ``[covariates]`` section: each key is a covariate's name, its value the
column of the card's ``[labels]`` table (``files``) that holds it, or a table with ``column``,
``codes`` (raw value -> name, e.g. DAIC-WOZ's ``0`` -> ``female``) and ``kind``::

    [covariates]
    gender = "gender"
    age = { column = "age", kind = "number" }

``kind`` is ``category`` (values are names; groups are the values) or ``number`` (values are
numbers; the report groups them in bands set in the recipe's ``[report] bands``); left out, it
is ``number`` when every value of the column is a number and no ``codes`` are given, else
``category``. Only a label table keyed by the speaker (one row per subject) can carry subject
covariates. A card without them yields no covariates and a one-line note that says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from transfer import UserError
from transfer.data.cards import Card
from transfer.data.corpora import _normalise_code, _normalise_key, read_label_table
from transfer.data.covariate_spec import CovariateSpec


@dataclass
class Covariates:
    """The covariates of a corpus' subjects: ``table`` (index: subject id as the corpus names
    it, one column per covariate; categories as strings, numbers as floats; missing values
    NaN), or None with ``note`` saying why there are none."""

    table: pd.DataFrame | None
    note: str = ""


def _as_number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _values(raw: pd.Series, spec: CovariateSpec, where: str) -> pd.Series:
    """A column's values as names (category) or floats (number); missing values NaN."""
    present = raw[raw.notna()]
    numeric = present.map(_as_number).notna().all()
    kind = spec.kind or ("number" if numeric and not spec.codes else "category")
    if kind == "number":
        values = raw.map(lambda v: math.nan if pd.isna(v) else _as_number(v))
        bad = present[present.map(_as_number).isna()]
        if len(bad):
            raise UserError(f"{where}: column {spec.column!r} is declared kind = \"number\" but "
                            f"holds {bad.iloc[0]!r}")
        return values.astype(float)
    names = raw.map(lambda v: math.nan if pd.isna(v) else _normalise_code(v))
    return names.map(lambda v: v if not isinstance(v, str) else spec.codes.get(v, v))


def read_covariates(card: Card, root: Path) -> Covariates:
    """The subject covariates the card names, read from its label table(s) under ``root``."""
    if not card.covariates:
        if card.labels.source != "table":
            why = (f"corpus '{card.name}' has no subject table (its labels come from "
                   f"{'file paths' if card.labels.source == 'path' else 'label files'}), so "
                   "there are no subject covariates to report")
        else:
            why = (f"the card of corpus '{card.name}' names no covariates (a [covariates] "
                   "section naming columns of its subject table, see datasets/README.md)")
        return Covariates(None, why)
    spec = card.labels
    parts = []
    for name in spec.files:
        path = root / name
        if not path.is_file():
            continue
        frame = read_label_table(path)
        missing = [c.column for c in card.covariates if c.column not in frame.columns]
        if missing:
            raise UserError(f"card {card.path} [covariates]: label table {path} has no column "
                            f"{missing[0]!r}; columns: {list(frame.columns)}")
        frame = frame[frame[spec.key_column].notna()]
        keys = [_normalise_key(k, spec.zero_pad) for k in frame[spec.key_column]]
        parts.append(pd.DataFrame({c.name: _values(frame[c.column], c, f"card {card.path}")
                                   .to_numpy() for c in card.covariates}, index=keys))
    if not parts:  # the label table itself is missing: build_manifest says so first
        return Covariates(None, f"corpus '{card.name}': no label table to read covariates from")
    table = pd.concat(parts)
    table = table[~table.index.duplicated(keep="first")]
    table.index = table.index.astype(str)
    return Covariates(table)
