"""Manifests: a corpus card plus a root folder becomes a table of audio files.

Columns: ``path`` (absolute), ``corpus``, ``label``, ``speaker`` (the subject in clinical
corpora), ``duration_s``, ``sample_rate``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from transfer import UserError
from transfer.cards import Card, load_card

MANIFEST_COLUMNS = ["path", "corpus", "label", "speaker", "duration_s", "sample_rate"]


@dataclass
class Manifest:
    """A corpus manifest with what was skipped or dropped on the way."""

    card: Card
    root: Path
    frame: pd.DataFrame
    labels: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    dropped: int = 0  # files whose label the card or recipe filters out
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.card.name


def resolve_root(card: Card, root: str | Path | None) -> Path:
    """The corpus root: the one given (recipe or ``--root``), else ``$<NAME>_ROOT``."""
    if root in (None, ""):
        root = os.environ.get(card.env_var, "")
        if not root:
            raise UserError(
                f"no root folder for corpus '{card.name}': set it in the recipe "
                f"(root = \"/path/to/{card.name}\") or with --root, or export {card.env_var}=/path")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"root folder for corpus '{card.name}' does not exist: {path}")
    return path.resolve()


def _read_table(card: Card, root: Path) -> dict[str, str]:
    spec = card.labels
    rows: dict[str, str] = {}
    conflicts: dict[str, set[str]] = {}
    found = []
    for name in spec.files:
        path = root / name
        if not path.is_file():
            continue
        found.append(path)
        try:
            if path.suffix.lower() in (".xlsx", ".xls"):
                table = pd.read_excel(path, dtype=object)
            else:
                sep = "\t" if path.suffix.lower() == ".tsv" else ","
                table = pd.read_csv(path, sep=sep, dtype=object, skipinitialspace=True)
        except Exception as err:  # noqa: BLE001 - any parser failure is reported the same way
            raise UserError(f"cannot read label table {path}: {err}") from None
        table.columns = [str(c).strip() for c in table.columns]
        for col in (spec.key_column, spec.label_column):
            if col not in table.columns:
                raise UserError(f"label table {path} has no column {col!r}; "
                                f"columns: {list(table.columns)}")
        for key, label in zip(table[spec.key_column], table[spec.label_column], strict=True):
            if pd.isna(key) or pd.isna(label):
                continue
            key, label = _normalise_key(key, spec.zero_pad), _normalise_code(label)
            if rows.get(key, label) != label:
                conflicts.setdefault(key, {rows[key]}).add(label)
            rows[key] = label
    if not found:
        raise UserError(f"corpus '{card.name}': no label table found; looked for "
                        f"{', '.join(str(root / f) for f in spec.files)}")
    if conflicts:
        shown = "; ".join(f"{k}: {sorted(v)}" for k, v in list(conflicts.items())[:6])
        raise UserError(f"corpus '{card.name}': the label table gives {len(conflicts)} key(s) "
                        f"in column {spec.key_column!r} several labels: {shown}; fix the table "
                        f"({', '.join(str(p) for p in found)})")
    return rows


def _normalise_code(value: object) -> str:
    """Spreadsheets store 1 as 1.0 and ids as numbers: make codes plain strings."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _normalise_key(value: object, zero_pad: int) -> str:
    key = _normalise_code(value)
    return key.zfill(zero_pad) if zero_pad and key.isdigit() else key


def _read_lines(card: Card, root: Path) -> dict[str, str]:
    spec = card.labels
    pattern = re.compile(spec.line_pattern)
    rows: dict[str, str] = {}
    files = sorted(root.glob(spec.line_glob))
    if not files:
        raise UserError(f"corpus '{card.name}': no label files match {root / spec.line_glob}")
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            m = pattern.match(line)
            if m:
                rows[m.group("key")] = m.group("label")
    return rows


def _probe(path: Path) -> tuple[float, int] | str:
    """(duration_s, sample_rate), or the reason the file cannot be used."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        info = sf.info(str(path))
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types
        return f"unreadable: {str(err).strip() or type(err).__name__}"
    if info.frames == 0:
        return "zero-length audio (0 frames)"
    return info.frames / info.samplerate, int(info.samplerate)


def build_manifest(card: Card | str | Path, root: str | Path | None = None, *,
                   label_map: dict[str, str] | None = None,
                   keep: list[str] | tuple[str, ...] | None = None,
                   max_bad_share: float = 0.05) -> Manifest:
    """Build the manifest of one corpus.

    Args:
        card: a :class:`Card`, a card name or a path to a card.
        root: the corpus folder; ``None`` reads ``$<NAME>_ROOT``.
        label_map, keep: override the card's label mapping and filter (recipe overrides).
        max_bad_share: fail when more than this share of the audio files is unreadable or empty.
    """
    card = card if isinstance(card, Card) else load_card(card)
    root = resolve_root(card, root)
    mapping = card.labels.map if label_map is None else label_map
    keep = tuple(card.labels.keep if keep is None else keep)
    final = card.final_labels(keep, mapping)

    paths = sorted(p for p in root.glob(card.audio.glob) if p.is_file())
    if not paths:
        raise UserError(f"corpus '{card.name}': no audio found under {root} "
                        f"matching '{card.audio.glob}' (card {card.path})")
    pattern = re.compile(card.audio.pattern)
    table = None
    if card.labels.source == "table":
        table = _read_table(card, root)
    elif card.labels.source == "lines":
        table = _read_lines(card, root)

    allowed = set(card.labels.names)
    records, skipped, warnings = [], [], []
    unmatched, without_row, dropped = [], [], 0
    keys_seen: set[str] = set()
    for path in paths:
        rel = path.relative_to(root).as_posix()
        m = pattern.match(rel)
        if m is None:
            unmatched.append(rel)
            continue
        groups = m.groupdict()
        if any(groups.get(k) != v for k, v in card.audio.require.items()):
            continue
        if table is None:
            raw = groups.get("label", "")
        else:
            key = _normalise_key(groups[card.labels.key_group], card.labels.zero_pad)
            keys_seen.add(key)
            if key not in table:
                without_row.append(rel)
                continue
            raw = table[key]
        raw = card.labels.codes.get(raw, raw)
        if raw not in allowed:
            raise UserError(f"corpus '{card.name}': file {rel} has label {raw!r}, which is not "
                            f"in the card's label set {sorted(allowed)} (card {card.path})")
        label = mapping.get(raw, raw)
        if keep and label not in keep:
            dropped += 1
            continue
        probe = _probe(path)
        if isinstance(probe, str):
            skipped.append((rel, probe))
            continue
        duration, sr = probe
        speaker = card.audio.speaker_format.format(**groups)
        records.append((str(path), card.name, label, speaker, duration, sr))

    if unmatched:
        warnings.append(f"{len(unmatched)} file(s) matching '{card.audio.glob}' do not match the "
                        f"card's pattern and were ignored, e.g. {unmatched[0]}")
    if without_row:
        warnings.append(f"{len(without_row)} audio file(s) have no row in the label table and "
                        f"were skipped, e.g. {without_row[0]}")
    if table is not None and card.labels.source == "table":
        no_audio = sorted(set(table) - keys_seen)
        if no_audio:
            warnings.append(f"{len(no_audio)} subject(s) in the label table have no audio, "
                            f"e.g. {no_audio[0]}")
    considered = len(records) + len(skipped)
    if considered and len(skipped) / considered > max_bad_share:
        listing = "\n".join(f"  {p}: {why}" for p, why in skipped[:20])
        raise UserError(f"corpus '{card.name}': {len(skipped)} of {considered} audio files are "
                        f"unusable, more than the allowed share {max_bad_share:.0%} "
                        f"(max_bad_share):\n{listing}")
    if not records:
        raise UserError(f"corpus '{card.name}': no usable audio under {root} after label "
                        f"filtering (kept labels: {final})")
    frame = pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS)
    present = [lab for lab in final if lab in set(frame["label"])]
    return Manifest(card, root, frame, present, skipped, dropped, warnings)
