"""The records of a grid's runs, typed, and ``runs.jsonl`` that holds them.

- :class:`RunRecord` is what one run says: a head (who it is: key, strategy, fold, seed,
  protocol, ...) that every status has, and what a finished run measured, in typed fields
  (metrics, per-unit outputs, curves, confusion, domain gap, validation scores, calibration,
  timing). :meth:`RunRecord.to_dict` writes one line of ``runs.jsonl``;
  :meth:`RunRecord.from_dict` reads one back, checked (a line that is not a record is a
  :class:`~transfer.evaluate.outputs.RecordError` with a one-line reason).
- :class:`RunResult` is what a grid's pack gives per run: the record and, beside it (never in
  it), the model package to export.
- :func:`write_record` appends a record to ``runs.jsonl`` (and writes its model package);
  :func:`read_records` reads ``runs.jsonl`` into records, ignoring a torn last line (a crash)
  and reporting any other line that is not a run record instead of failing on it.

The keys on disk are those of the versions before the typed record, so their folders resume and
rebuild unchanged. Records from before decision units (metrics ``subject_*``, no ``unit``) are
converted once, in :meth:`RunRecord.from_dict`: the rename is exact (the subject was the only
unit then), so such a folder's table can still be rebuilt without training again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

from transfer.common.cache import append_line
from transfer.evaluate.outputs import (
    Calibration,
    Gap,
    RecordError,
    UnitOutputs,
    Validation,
    field_of,
    number_map,
)

log = logging.getLogger(__name__)

_reported: set[tuple[str, int]] = set()

#: A head field without a default in :data:`HEAD`: every record must hold it.
REQUIRED = dataclasses.MISSING

#: The head of a record as ``runs.jsonl`` holds it: name -> (type, default when absent).
#: ``unit`` defaults to "subject": records from before decision units decided per subject.
HEAD: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "key": (str, REQUIRED), "status": (str, REQUIRED), "strategy": (str, REQUIRED),
    "fold": (int, REQUIRED), "seed": (int, REQUIRED), "protocol": (str, REQUIRED),
    "speaker_dependent": (bool, REQUIRED), "strategy_name": (str, ""), "unit": (str, "subject"),
    "uses_source": (bool, False), "labels": (list, []), "sizes": (dict, {}), "pack": (int, 1),
    "positive": (str, ""), "draw": (int, 0), "hparams": (dict, {}), "adapt": (str, "none"),
    "error": (str, ""), "traceback": (str, ""), "seconds": (float, 0.0)}

#: What a finished run's record must hold besides the head.
OK_FIELDS = ("metrics", "curves", "confusion", "best_epoch")

#: Optional scalar results: name -> type (absent: None).
SCALARS: dict[str, type] = {"epochs_run": int, "stopped": str, "train_seconds": float,
                            "source_free": bool, "covariates_note": str, "model": str}


@dataclasses.dataclass(frozen=True)
class EpochRow:
    """One epoch of a run's training curve.

    ``loss`` is the target loss, ``val_uar``/``val_loss`` the validation scores the epoch is
    selected by (absent without validation labels); ``terms`` holds the strategy's own logged
    terms (``align_mmd``, ``adv``, ``disc_acc``, ...).
    """

    epoch: int
    loss: float | None = None
    val_uar: float | None = None
    val_loss: float | None = None
    terms: dict[str, float] = dataclasses.field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Every value the row holds, by name (``epoch`` aside)."""
        named = {n: getattr(self, n) for n in ("loss", "val_uar", "val_loss")}
        return {**{n: v for n, v in named.items() if v is not None}, **self.terms}

    def to_dict(self) -> dict[str, Any]:
        """The row as ``runs.jsonl`` holds it: ``epoch`` and every value at the top level."""
        return {"epoch": self.epoch, **self.scalars()}

    @classmethod
    def from_dict(cls, data: Any) -> EpochRow:
        """Read a row back (a :class:`RecordError` when it is not one)."""
        if not isinstance(data, dict):
            raise RecordError(f"a row of its 'curves' is {type(data).__name__}, not dict")
        epoch = field_of(data, "epoch", int, "curves")
        values = number_map({k: v for k, v in data.items() if k != "epoch"}, "curves")
        named = {n: values.pop(n) for n in ("loss", "val_uar", "val_loss") if n in values}
        return cls(epoch, **named, terms=values)

    @classmethod
    def of(cls, row: dict[str, float], decimals: int = 5) -> EpochRow:
        """A row of the engine's log (:class:`transfer.train.engine.FitResult`), its values
        rounded to ``decimals`` (a curve is read by eye; the full floats bloat the file)."""
        return cls.from_dict({k: round(v, decimals) if isinstance(v, float) else v
                              for k, v in row.items()})


@dataclasses.dataclass
class RunRecord:
    """One run of a grid, finished or failed: who it is, then what it gave.

    The head (``key`` .. ``seconds``) is the same for every status, so a failed run (a raising
    pack, a lost Ray worker, a diverged run) keeps its protocol and ``speaker_dependent`` mark
    in the table. A finished run also holds its results: ``metrics`` (``segment_<m>`` and
    ``unit_<m>`` for every m of :data:`transfer.evaluate.metrics.METRICS`), the test and
    validation units' outputs, the per-epoch ``curves``, the test segments' ``confusion``
    matrix, ``validation`` scores, ``calibration``, the domain ``gap`` (diagnostics), the
    label-free ``selection`` scores (unlabelled mode) and its timing; a diverged run its
    ``best_epoch``/``epochs_run``/``stopped``.

    ``metrics`` is a ``{name: float}`` map rather than a class with one attribute per metric:
    the names are declared once (:data:`~transfer.evaluate.metrics.METRICS`, two levels) and
    every reader goes over them by name (the table's columns, the sweep's selection metric), so
    attributes would only be read back through ``getattr``. :meth:`metric` reads one (NaN where
    a record lacks it).
    """

    key: str
    strategy: str  # the table row: the strategy entry's label (+ its test-time adaptation)
    fold: int
    seed: int
    protocol: str = ""
    speaker_dependent: bool = False
    strategy_name: str = ""
    unit: str = "subject"
    uses_source: bool = False
    labels: list[str] = dataclasses.field(default_factory=list)
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    pack: int = 1  # runs trained together as one model
    positive: str = ""  # the positive class of a binary target: what sens/spec refer to
    draw: int = 0  # the sweep draw (0: the recipe's settings)
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # the draw's values
    adapt: str = "none"  # test-time adaptation before testing (evaluate.adapt)
    status: str = "ok"  # "ok" | "failed"
    error: str = ""
    traceback: str = ""
    seconds: float = 0.0  # wall time of the pack the run trained in
    # --- results ---------------------------------------------------------------------------
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    units: UnitOutputs | None = None  # the test units
    val_units: UnitOutputs | None = None  # the validation units (thresholds come from these)
    validation: Validation | None = None
    selection: dict[str, float] = dataclasses.field(default_factory=dict)  # label-free rules
    curves: list[EpochRow] = dataclasses.field(default_factory=list)
    confusion: list[list[int]] = dataclasses.field(default_factory=list)
    gap: Gap | None = None
    calibration: Calibration | None = None
    covariates_note: str | None = None  # why the test units have no covariates
    best_epoch: int | None = None
    epochs_run: int | None = None
    stopped: str | None = None  # "", "patience", "halving" or "diverged"
    train_seconds: float | None = None
    source_free: bool | None = None  # trained without the source at all
    model: str | None = None  # the exported package, relative to the results folder

    @property
    def ok(self) -> bool:
        """Whether the run finished."""
        return self.status == "ok"

    @property
    def scored(self) -> bool:
        """Whether the run finished and holds its test units' outputs."""
        return self.ok and self.units is not None

    def metric(self, name: str) -> float:
        """One of :attr:`metrics` (``unit_uar``, ``segment_auc``, ...); NaN when absent."""
        return self.metrics.get(name, math.nan)

    def to_dict(self) -> dict[str, Any]:
        """The record as one line of ``runs.jsonl`` holds it: the head and the results at the
        top level (a result only where the run has it)."""
        out: dict[str, Any] = {n: getattr(self, n) for n in HEAD
                               if n not in ("error", "traceback") or not self.ok}
        if self.ok:
            out.update(metrics=self.metrics, confusion=self.confusion,
                       curves=[row.to_dict() for row in self.curves])
        for name in ("units", "val_units", "validation", "gap", "calibration"):
            part = getattr(self, name)
            if part is not None:
                out[name] = part.to_dict()
        if self.selection:
            out["selection"] = self.selection
        for name in ("best_epoch", *SCALARS):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """A record from one parsed line of ``runs.jsonl``; a :class:`RecordError` with a
        one-line reason when it is not one (not an object, a field missing or of the wrong
        type). Records from before decision units are converted (see the module docstring)."""
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        if data.get("status") not in ("ok", "failed"):
            raise RecordError(f"its status is {data.get('status')!r}, not 'ok' or 'failed'")
        head = {n: field_of(data, n, kind, "", copy.deepcopy(default))
                for n, (kind, default) in HEAD.items()}
        if head["status"] == "ok":
            missing = [n for n in OK_FIELDS if n not in data]
            if missing:
                raise RecordError(f"it lacks {missing[0]!r}")
        return cls(**head, **_results(data))


def _results(data: dict[str, Any]) -> dict[str, Any]:
    """The typed result fields of a parsed record (absent ones left to their defaults)."""
    out: dict[str, Any] = {}
    if "metrics" in data:
        metrics = number_map(data["metrics"], "metrics")
        out["metrics"] = {_unit_name(k): v for k, v in metrics.items()}
    if "curves" in data:
        out["curves"] = [EpochRow.from_dict(row) for row in field_of(data, "curves", list)]
    if "confusion" in data:
        out["confusion"] = field_of(data, "confusion", list)
    if "selection" in data:
        out["selection"] = number_map(data["selection"], "selection")
    parts = {"units": UnitOutputs.from_dict, "validation": Validation.from_dict,
             "val_units": lambda d: UnitOutputs.from_dict(d, "val_units"),
             "gap": Gap.from_dict, "calibration": Calibration.from_dict}
    out.update({n: read(data[n]) for n, read in parts.items() if data.get(n) is not None})
    out.update({n: field_of(data, n, kind) for n, kind in SCALARS.items() if n in data})
    if "best_epoch" in data:
        out["best_epoch"] = field_of(data, "best_epoch", int)
    return out


def _unit_name(metric: str) -> str:
    """A metric's name; records from before decision units say ``subject_*`` for ``unit_*``."""
    return "unit_" + metric[len("subject_"):] if metric.startswith("subject_") else metric


class RunResult(NamedTuple):
    """What a grid's pack gives per run: its record and, beside it, the model package to
    export (:func:`transfer.train.package.make_package`; None without ``--export``)."""

    record: RunRecord
    package: dict[str, Any] | None = None


def record_problem(data: Any) -> str:
    """Why ``data`` (one parsed line of ``runs.jsonl``) is not a run record; "" when it is."""
    try:
        RunRecord.from_dict(data)
    except RecordError as err:
        return str(err)
    return ""


def read_records(path: str | Path) -> list[RunRecord]:
    """Every run record of a records file.

    A torn last line (a crash in the middle of a write) is ignored silently; any other line
    that is not a run record (not JSON, or JSON that :meth:`RunRecord.from_dict` refuses) is
    reported once, in one line with the reason, and ignored; a resume redoes its run.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(RunRecord.from_dict(json.loads(line)))
            continue
        except json.JSONDecodeError:
            if n == len(lines):  # torn last line
                continue
            problem = "not JSON"
        except RecordError as err:
            problem = str(err)
        if (str(path), n) not in _reported:
            _reported.add((str(path), n))
            log.warning(f"warning: {path} line {n} is not a run record ({problem}); ignored: "
                        f"{line[:60]!r}")
    return records


def write_record(path: Path, record: RunRecord, package: dict[str, Any] | None = None) -> None:
    """Append one run's record to ``runs.jsonl`` (flushed and fsynced). Its model package, if
    any, is written first by this (the parent) process, whichever process trained it, into
    ``models/runs/``, and the record names it (``model``)."""
    if package is not None:
        from transfer.train.package import save_package

        rel = f"models/runs/{record.strategy}-fold{record.fold}-seed{record.seed}.pt"
        save_package(package, path.parent / rel)
        record.model = rel
    append_line(path, json.dumps(record.to_dict(), default=float))
    if not record.ok:
        log.error(f"run failed {record.strategy} fold {record.fold} seed {record.seed}: "
                  f"{record.error}")


def planned(records: list[RunRecord], keys: set[str]) -> list[RunRecord]:
    """The records of the runs whose keys the current plan contains."""
    return [r for r in records if r.key in keys]
