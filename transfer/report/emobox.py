"""EmoBox-compatible outputs, so that a result can stand next to EmoBox's leaderboard (Ma et al.,
Interspeech 2024, github.com/emo-box/EmoBox).

- :func:`write_predictions`: per run, ``predictions/<strategy>-fold<f>-seed<s>.jsonl`` with one
  ``{"key": ..., "pred": ...}`` line per test decision unit (``pred``: the index of the
  predicted label in ``predictions/label_map.json``), the matching labels in EmoBox's
  ``{"key": ..., "label": ...}`` form (``targets-fold<f>-seed<s>.jsonl``), and
  ``predictions/scores.csv`` with EmoBox's metric names: WA (accuracy), UA (unweighted
  accuracy = balanced accuracy = UAR), micro-F1 and macro-F1, per run.
- :func:`write_folds`: EmoBox-style leave-one-speaker-out fold files for a corpus:
  ``<out>/<corpus>/fold_<n>/<corpus>_{train,test}_fold_<n>.jsonl`` (speakers in sorted order,
  fold n tests the n-th) and ``label_map.json``; every line holds EmoBox's metadata fields
  (key, dataset, wav, type, sample_rate, num_frame, task, length, emo, channel).

Keys are the toolkit's recording ids (a file's path relative to the corpus' common folder,
e.g. ``wangzhe/angry/201.wav``), the same in the fold files and in the predictions of a target
whose decision unit is the recording (emotion corpora); with subject-level units (MODMA,
DAIC-WOZ) a prediction's key is the subject id, since that is what the toolkit decides on.
EmoBox's own fold files name utterances its own way and order speakers its own way: compare
against its leaderboard with the fold files written here and the same protocol
(``protocol.name = "loso"``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from transfer.common.cache import atomic_write_text
from transfer.grid.records import RunRecord


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def emobox_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """EmoBox's metrics (its ``ComputePerformance``) under its names."""
    return {"num": int(len(y)), "WA": float(accuracy_score(y, pred)),
            "UA": float(balanced_accuracy_score(y, pred)),
            "micro-F1": float(f1_score(y, pred, average="micro")),
            "macro-F1": float(f1_score(y, pred, average="macro"))}


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_predictions(out_dir: Path, records: list[RunRecord]) -> pd.DataFrame:
    """Every finished run's test predictions in EmoBox's form (see the module docstring), and
    the table of its scores (also written as ``predictions/scores.csv``)."""
    ok = [r for r in records if r.scored]
    folder = Path(out_dir) / "predictions"
    if folder.exists():  # a rebuild: no file of an earlier build stays behind
        shutil.rmtree(folder)
    if not ok:
        return pd.DataFrame()
    folder.mkdir(parents=True)
    labels = ok[0].labels or [str(k) for k in range(len(ok[0].units.prob[0]))]
    atomic_write_text(folder / "label_map.json",
                      json.dumps({name: i for i, name in enumerate(labels)}, indent=2))
    rows = []
    for r in ok:
        units = r.units
        y = np.asarray(units.y, dtype=np.int64)
        pred = np.asarray(units.prob, dtype=float).argmax(1)
        tag = f"fold{r.fold}-seed{r.seed}"
        atomic_write_text(folder / f"{_safe(r.strategy)}-{tag}.jsonl", _lines(
            [{"key": k, "pred": int(p)} for k, p in zip(units.id, pred)]))
        atomic_write_text(folder / f"targets-{tag}.jsonl", _lines(
            [{"key": k, "label": int(v)} for k, v in zip(units.id, y)]))
        rows.append({"strategy": r.strategy, "fold": r.fold, "seed": r.seed,
                     **emobox_scores(y, pred)})
    scores = pd.DataFrame(rows)
    scores.to_csv(folder / "scores.csv", index=False)
    return scores


def write_folds(card, root: str | Path | None, out: str | Path) -> list[Path]:
    """EmoBox-style leave-one-speaker-out fold files of a corpus (see the module docstring).

    Args:
        card: a corpus card (name, path or :class:`~transfer.data.cards.Card`).
        root: the corpus folder (None: ``$<NAME>_ROOT``).
        out: the folder to write ``<corpus>/fold_<n>/...`` into.
    """
    from transfer import UserError
    from transfer.data.audio import probe
    from transfer.data.corpora import build_manifest
    from transfer.data.units import unit_ids

    manifest = build_manifest(card, root)
    frame = manifest.frame
    name = manifest.card.name
    speakers = frame["speaker"].to_numpy(str)
    if len(set(speakers)) < 2:
        raise UserError(f"corpus '{name}' has one speaker; leave-one-speaker-out needs two")
    keys = unit_ids("recording", speakers, frame["path"].to_numpy(str))
    entries = []
    for key, (_, row) in zip(keys, frame.iterrows()):
        info = probe(Path(row["path"]))
        entries.append({"key": str(key), "dataset": name, "wav": row["path"], "type": "raw",
                        "sample_rate": int(row["sample_rate"]),
                        "num_frame": float(round(row["duration_s"] * row["sample_rate"])),
                        "task": "category", "length": float(row["duration_s"]),
                        "emo": row["label"],
                        "channel": int(getattr(info, "channels", 1))})
    base = Path(out) / name
    base.mkdir(parents=True, exist_ok=True)
    atomic_write_text(base / "label_map.json", json.dumps(
        {label: label for label in manifest.labels}, indent=2))
    written = [base / "label_map.json"]
    for n, speaker in enumerate(sorted(set(speakers)), 1):
        fold = base / f"fold_{n}"
        fold.mkdir(exist_ok=True)
        for split, keep in (("train", speakers != speaker), ("test", speakers == speaker)):
            path = fold / f"{name}_{split}_fold_{n}.jsonl"
            atomic_write_text(path, _lines([e for e, k in zip(entries, keep) if k]))
            written.append(path)
    return written
