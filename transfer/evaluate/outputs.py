"""What a run's evaluation gives, typed: per-unit outputs, calibration counts, the domain gap and
the validation scores, each with the one ``to_dict`` / ``from_dict`` pair that ``runs.jsonl``
uses (the grid's :class:`transfer.grid.records.RunRecord` holds them).

:class:`ScoredRun` is the part of a run record the evaluation readers (:mod:`.stats`,
:mod:`.operating`, :mod:`.calibration`, :mod:`.subgroups`) read: they sit below the grid, so
they name the attributes they need rather than the grid's class.

``from_dict`` raises :class:`RecordError` with a one-line reason ("its 'units' lacks 'prob'")
for a part that is not what the toolkit writes; :func:`transfer.grid.records.read_records`
reports the line and skips it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol


class RecordError(ValueError):
    """A line of ``runs.jsonl`` that is not a run record; the message says why, in one line."""


def field_of(data: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str = "",
             default: Any = dataclasses.MISSING) -> Any:
    """``data[name]`` checked to be of ``kind`` (an int is no bool; a float may be an int);
    ``default`` when absent (absent without a default: a :class:`RecordError`)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    label = repr(f"{where}.{name}" if where else name)
    if name not in data:
        if default is dataclasses.MISSING:
            raise RecordError(f"it lacks {label}")
        return default
    value = data[name]
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        allowed = " or ".join(k.__name__ for k in kinds)
        raise RecordError(f"its {label} is {type(value).__name__}, not {allowed}")
    return value


def number_map(data: Any, name: str) -> dict[str, float]:
    """A ``{name: number}`` part (metrics, selection scores) as floats; a
    :class:`RecordError` names the part when it is not one."""
    if not isinstance(data, dict):
        raise RecordError(f"its {name!r} is {type(data).__name__}, not dict")
    bad = [k for k, v in data.items()
           if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool))]
    if bad:
        raise RecordError(f"its {name!r} are not all numbers ({bad[0]!r})")
    return {str(k): math.nan if v is None else float(v) for k, v in data.items()}


@dataclasses.dataclass(frozen=True)
class UnitOutputs:
    """A run's outputs per decision unit, sorted by id (:func:`.metrics.unit_outputs`).

    Shape:
        id: (U,) unit ids; y: (U,) labels; prob: (U, K) mean class probabilities of the unit's
        segments; prob_ts: (U, K) the same after temperature scaling (test units only);
        covariates: name -> (U,) values (test units of a target with subject covariates).
    """

    id: list[str]
    y: list[int]
    prob: list[list[float]]
    prob_ts: list[list[float]] | None = None
    covariates: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The part as ``runs.jsonl`` holds it (``prob_ts``/``covariates`` only when set)."""
        out: dict[str, Any] = {"id": self.id, "y": self.y, "prob": self.prob}
        if self.prob_ts is not None:
            out["prob_ts"] = self.prob_ts
        if self.covariates:
            out["covariates"] = self.covariates
        return out

    @classmethod
    def from_dict(cls, data: Any, name: str = "units") -> UnitOutputs:
        """Read the part back, checking that its lists agree in length."""
        if not isinstance(data, dict):
            raise RecordError(f"its {name!r} is {type(data).__name__}, not dict")
        out = cls(list(field_of(data, "id", list, name)), list(field_of(data, "y", list, name)),
                  list(field_of(data, "prob", list, name)),
                  field_of(data, "prob_ts", (list, type(None)), name, None),
                  dict(field_of(data, "covariates", dict, name, {})))
        lengths = {len(out.id), len(out.y), len(out.prob),
                   *([len(out.prob_ts)] if out.prob_ts is not None else []),
                   *(len(v) for v in out.covariates.values())}
        if len(lengths) > 1:
            raise RecordError(f"its {name!r} lists differ in length ({sorted(lengths)})")
        return out


@dataclasses.dataclass(frozen=True)
class Bins:
    """Reliability counts of a run's test segments (:func:`.calibration.reliability`) and the
    sum of their Brier terms. Shape: count, conf, correct: (BINS,)."""

    count: list[int]
    conf: list[float]
    correct: list[int]
    brier: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """The part as ``runs.jsonl`` holds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Bins:
        """Read the part back."""
        if not isinstance(data, dict):
            raise RecordError(f"its {name!r} is {type(data).__name__}, not dict")
        return cls(field_of(data, "count", list, name), field_of(data, "conf", list, name),
                   field_of(data, "correct", list, name),
                   field_of(data, "brier", float, name, math.nan))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A run's segment calibration (:func:`.calibration.run_calibration`): the temperature
    fitted on its validation segments, the number of test segments, and their reliability
    counts before and after scaling."""

    temperature: float
    n: int
    before: Bins
    after: Bins

    def to_dict(self) -> dict[str, Any]:
        """The part as ``runs.jsonl`` holds it."""
        return {"temperature": self.temperature, "n": self.n, "before": self.before.to_dict(),
                "after": self.after.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Read the part back."""
        if not isinstance(data, dict):
            raise RecordError(f"its 'calibration' is {type(data).__name__}, not dict")
        return cls(field_of(data, "temperature", float, "calibration"),
                   field_of(data, "n", int, "calibration"),
                   Bins.from_dict(data.get("before"), "calibration.before"),
                   Bins.from_dict(data.get("after"), "calibration.after"))


@dataclasses.dataclass(frozen=True)
class Gap:
    """The domain gap of a run's ``general`` features (:func:`.diagnostics.domain_gap`):
    MMD and proxy A-distance between held-out source and target test data, and for the first
    split a 2-D PCA of both (``projection``: ``source``/``target`` -> (N, 2) points)."""

    mmd: float
    a_distance: float
    projection: dict[str, list[list[float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The part as ``runs.jsonl`` holds it (keys ``gap_mmd``, ``gap_a_distance``)."""
        out: dict[str, Any] = {"gap_mmd": self.mmd, "gap_a_distance": self.a_distance}
        if self.projection is not None:
            out["projection"] = self.projection
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Gap:
        """Read the part back."""
        if not isinstance(data, dict):
            raise RecordError(f"its 'gap' is {type(data).__name__}, not dict")
        return cls(field_of(data, "gap_mmd", float, "gap", math.nan),
                   field_of(data, "gap_a_distance", float, "gap", math.nan),
                   field_of(data, "projection", (dict, type(None)), "gap", None))


@dataclasses.dataclass(frozen=True)
class Validation:
    """What a run scored on its validation units (never the test fold), which a sweep selects
    draws by: with a labelled target the unit UAR (ties: lower ``loss``) with the unit
    accuracy and segment UAR (:func:`.metrics.validation_scores`); with an unlabelled one the
    recipe's label-free ``rule`` and its ``score`` instead."""

    unit_uar: float = math.nan
    unit_acc: float = math.nan
    segment_uar: float = math.nan
    loss: float = math.nan
    rule: str = ""  # the label-free rule (unlabelled mode); "" = the labelled scores above
    score: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """The part as ``runs.jsonl`` holds it (either the labelled scores or rule + score)."""
        if self.rule:
            return {"rule": self.rule, "score": self.score}
        return {"unit_uar": self.unit_uar, "unit_acc": self.unit_acc,
                "segment_uar": self.segment_uar, "loss": self.loss}

    @classmethod
    def from_dict(cls, data: Any) -> Validation:
        """Read the part back (absent scores are NaN)."""
        if not isinstance(data, dict):
            raise RecordError(f"its 'validation' is {type(data).__name__}, not dict")
        rule = field_of(data, "rule", str, "validation", "")
        scores = number_map({k: v for k, v in data.items() if k != "rule"}, "validation")
        known = {f.name for f in dataclasses.fields(cls)} - {"rule"}
        return cls(rule=rule, **{k: v for k, v in scores.items() if k in known})

    @property
    def rank(self) -> tuple[float, float]:
        """How a sweep ranks this run's draw, higher first: the label-free rule's score, else
        (unit UAR, -loss); NaN ranks last."""
        def up(v: float) -> float:
            return -math.inf if math.isnan(v) else v

        if self.rule:
            return (up(self.score), 0.0)
        return (up(self.unit_uar), up(-self.loss))


class ScoredRun(Protocol):
    """What the evaluation readers read of a run record (the grid's ``RunRecord`` has it)."""

    key: str
    strategy: str
    seed: int
    status: str
    labels: list[str]
    positive: str
    units: UnitOutputs | None
    val_units: UnitOutputs | None
    calibration: Calibration | None

    @property
    def scored(self) -> bool:
        """Whether the run finished and holds its test units' outputs."""
        ...


def positive_index(run: ScoredRun) -> int:
    """The positive class of a run: its ``positive`` label, else the second of two labels (the
    metrics' convention), else -1 (no positive class: more than two labels)."""
    if run.positive in run.labels:
        return run.labels.index(run.positive)
    return 1 if len(run.labels) == 2 else -1
