"""How a corpus card names subject covariates (its ``[covariates]`` section); reading them is
:mod:`transfer.data.covariates`' job.

Each key is a covariate's name, its value the column of the card's ``[labels]`` table that
holds it, or a table with ``column``, ``codes`` (raw value -> name) and ``kind``
(``category`` | ``number``)::

    [covariates]
    gender = "gender"
    age = { column = "age", kind = "number" }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transfer import UserError

if TYPE_CHECKING:  # type-only: cards.py imports this module
    from transfer.data.cards import Card

KINDS = ("", "category", "number")


@dataclass(frozen=True)
class CovariateSpec:
    """One covariate of a card: its name, the table column and how its values are read."""

    name: str
    column: str
    codes: dict[str, str] = field(default_factory=dict)
    kind: str = ""  # "" = decided from the values (see the module docstring)


def parse_covariates(data: Any, path: str) -> tuple[CovariateSpec, ...]:
    """The ``[covariates]`` section of a card (already read from TOML)."""
    if not isinstance(data, dict):
        raise UserError(f"card {path}: [covariates] must be a table of name = \"column\", got "
                        f"{data!r}")
    specs = []
    for name, value in data.items():
        where = f"card {path} [covariates] {name}"
        if isinstance(value, str):
            value = {"column": value}
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a column name or a table with column, codes, kind; "
                            f"got {value!r}")
        unknown = sorted(set(value) - {"column", "codes", "kind"})
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; allowed: codes, column, kind")
        column, codes, kind = value.get("column"), value.get("codes", {}), value.get("kind", "")
        if not isinstance(column, str) or not column:
            raise UserError(f"{where} needs column = \"<column of the label table>\", got "
                            f"{column!r}")
        if not isinstance(codes, dict) or not all(isinstance(v, str) for v in codes.values()):
            raise UserError(f"{where}: codes must be a table of strings (raw = \"name\"), got "
                            f"{codes!r}")
        if kind not in KINDS:
            raise UserError(f"{where}: kind must be 'category' or 'number', not {kind!r}")
        specs.append(CovariateSpec(name, column, dict(codes), kind))
    return tuple(specs)


def check_covariates(card: Card) -> None:
    """Covariates need a label table with one row per subject (keyed by the speaker)."""
    if card.covariates and (card.labels.source != "table" or card.labels.key_group != "speaker"):
        raise UserError(f"card {card.path}: [covariates] are columns of a subject table, so they "
                        "need [labels] source = \"table\" keyed by the speaker (key_group = "
                        "\"speaker\")")
