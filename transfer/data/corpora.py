"""Manifests: a corpus card plus a root folder becomes a table of audio files.

Columns: ``path`` (absolute), ``corpus``, ``label``, ``speaker`` (the subject in clinical
corpora), ``duration_s``, ``sample_rate``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from transfer import UserError
from transfer.data.audio import AudioInfo, probe
from transfer.data.cards import Card, load_card

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
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # audio the card misses
    without_row: list[str] = field(default_factory=list)  # audio with no label-table row
    excluded: int = 0  # files the card's [audio] require leaves out on purpose

    @property
    def name(self) -> str:
        """The corpus (card) name."""
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


def reason_counts(items: list[tuple[str, str]]) -> dict[str, int]:
    """How many (path, reason) items per reason class (the text before the first ':')."""
    counts = Counter(reason.split(":", 1)[0] for _, reason in items)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _add_row(rows: dict[str, str], where: dict[str, str], key: str, label: str, place: str,
             what: str) -> None:
    """Record one key -> label row; the same key with another label is an error naming both."""
    if key in rows and rows[key] != label:
        raise UserError(f"label table: {what} {key!r} is listed twice with different labels: "
                        f"{where[key]} says {rows[key]!r}, {place} says {label!r}; keep one row "
                        f"per {what}")
    if key not in rows:
        rows[key], where[key] = label, place


def read_label_table(path: Path) -> pd.DataFrame:
    """A card's label table (xlsx/xls, tsv or csv) as strings, column names stripped; a file
    that does not parse is one :class:`transfer.UserError` naming it."""
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            table = pd.read_excel(path, dtype=object)
        else:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            table = pd.read_csv(path, sep=sep, dtype=object, skipinitialspace=True)
    except Exception as err:  # noqa: BLE001 - any parser failure is reported the same way
        raise UserError(f"cannot read label table {path}: {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _read_table(card: Card, root: Path) -> dict[str, str]:
    spec = card.labels
    rows: dict[str, str] = {}
    where: dict[str, str] = {}
    found = []
    for name in spec.files:
        path = root / name
        if not path.is_file():
            continue
        found.append(path)
        table = read_label_table(path)
        for col in (spec.key_column, spec.label_column):
            if col not in table.columns:
                raise UserError(f"label table {path} has no column {col!r}; "
                                f"columns: {list(table.columns)}")
        keys, labels = table[spec.key_column], table[spec.label_column]
        for i, (key, label) in enumerate(zip(keys, labels, strict=True)):
            if pd.isna(key) or pd.isna(label):
                continue
            # i + 2: the spreadsheet row (row 1 is the header)
            _add_row(rows, where, _normalise_key(key, spec.zero_pad), _normalise_code(label),
                     f"{path} row {i + 2}", spec.unit or "subject")
    if not found:
        raise UserError(f"corpus '{card.name}': no label table found; looked for "
                        f"{', '.join(str(root / f) for f in spec.files)}")
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
    where: dict[str, str] = {}
    files = sorted(root.glob(spec.line_glob))
    if not files:
        raise UserError(f"corpus '{card.name}': no label files match {root / spec.line_glob}")
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            m = pattern.match(line)
            if m:
                _add_row(rows, where, m.group("key"), m.group("label"), f"{path} line {n}",
                         "utterance")
    return rows


def _missed_by_glob(root: Path, glob: str, found: set[Path]) -> list[tuple[str, str]]:
    """Audio files under ``root`` with the glob's suffix in any letter case that the glob does
    not find (``.WAV`` for ``*.wav``, files one folder too deep), each with the reason."""
    suffix = PurePosixPath(glob).suffix
    if not suffix or any(c in suffix for c in "*?["):
        return []
    depth = None if "**" in glob else len(PurePosixPath(glob).parts)
    missed = []
    for path in root.rglob("*"):
        if path.suffix.lower() != suffix.lower() or path in found or not path.is_file():
            continue
        rel = path.relative_to(root)
        if path.suffix != suffix:
            why = (f"suffix case: {path.suffix!r} is not {suffix!r} (the card's glob "
                   f"{glob!r} is case-sensitive)")
        elif depth is not None and len(rel.parts) != depth:
            why = (f"wrong depth: {len(rel.parts)} path levels, the card's glob {glob!r} "
                   f"has {depth}")
        else:
            why = f"not found by the card's glob: {glob!r}"
        missed.append((rel.as_posix(), why))
    return sorted(missed)


def _why_none(sorting: _Sorting, final: list[str]) -> str:
    """Where the files of a corpus with no usable file went (the skipped ones are an error of
    their own before this), each reason with its count, largest first."""
    unmatched = sorting.unmatched
    reasons = [(len(unmatched), "do not match the card" + (
                   f" (e.g. {unmatched[0][0]}: {unmatched[0][1]})" if unmatched else "")),
               (sorting.excluded, "are left out by the card's [audio] require"),
               (len(sorting.without_row), "have no row in the label table"),
               (sorting.dropped, f"carry a label the label filter drops (kept labels: {final})")]
    return "; ".join(f"{n} {why}" for n, why in sorted(reasons, key=lambda r: -r[0]) if n)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


@dataclass
class _Sorting:
    """Where the audio files of a corpus went on the way to its manifest."""

    labelled: list[tuple[Path, str, dict[str, str], str]] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    without_row: list[str] = field(default_factory=list)
    keys_seen: set[str] = field(default_factory=set)
    dropped: int = 0
    excluded: int = 0


def _label_files(card: Card, root: Path, paths: list[Path], table: dict[str, str] | None,
                 mapping: dict[str, str], keep: tuple[str, ...]) -> _Sorting:
    """Match every file against the card's pattern and give it its label: (path, relative
    path, pattern groups, label) for the files kept, the others counted by reason."""
    pattern = re.compile(card.audio.pattern)
    allowed = set(card.labels.names)
    out = _Sorting()
    for path in paths:
        rel = path.relative_to(root).as_posix()
        m = pattern.match(rel)
        if m is None:
            out.unmatched.append((rel, "pattern: does not match the card's [audio] pattern"))
            continue
        groups = m.groupdict()
        if any(groups.get(k) != v for k, v in card.audio.require.items()):
            out.excluded += 1
            continue
        if table is None:
            raw = groups.get("label", "")
        else:
            key = _normalise_key(groups[card.labels.key_group], card.labels.zero_pad)
            out.keys_seen.add(key)
            if key not in table:
                out.without_row.append(rel)
                continue
            raw = table[key]
        raw = card.labels.codes.get(raw, raw)
        if raw not in allowed:
            raise UserError(f"corpus '{card.name}': file {rel} has label {raw!r}, which is not "
                            f"in the card's label set {sorted(allowed)} (card {card.path})")
        label = mapping.get(raw, raw)
        if keep and label not in keep:
            out.dropped += 1
            continue
        out.labelled.append((path, rel, groups, label))
    return out


def _probe_files(card: Card, labelled: list[tuple[Path, str, dict[str, str], str]],
                 min_seconds: float) -> tuple[list[tuple], list[tuple[str, str]],
                                              dict[str, AudioInfo]]:
    """Manifest rows of the usable files; (relative path, reason) of the others."""
    records, skipped, infos = [], [], {}
    for path, rel, groups, label in labelled:
        info = probe(path)
        if isinstance(info, AudioInfo) and info.seconds < min_seconds:
            info = (f"too short: {info.seconds * 1000:.3g} ms, less than one analysis frame of "
                    f"the features ({min_seconds * 1000:.3g} ms)")
        if isinstance(info, str):
            skipped.append((rel, info))
            continue
        infos[rel] = info
        speaker = card.audio.speaker_format.format(**groups)
        records.append((str(path), card.name, label, speaker, info.seconds, info.sample_rate))
    return records, skipped, infos


def _warnings(card: Card, table: dict[str, str] | None, sorting: _Sorting,
              infos: dict[str, AudioInfo]) -> list[str]:
    """What the summary should say about files used with a change or not used at all."""
    warnings = []
    unmatched = sorting.unmatched
    if unmatched:
        warnings.append(f"{len(unmatched)} audio file(s) do not match the card and were not "
                        f"used ({_counts(reason_counts(unmatched))}), e.g. {unmatched[0][0]}: "
                        f"{unmatched[0][1]}")
    multi = [rel for rel, info in infos.items() if info.channels > 1]
    if multi:
        warnings.append(f"{len(multi)} file(s) have more than one channel and are mixed down to "
                        f"mono, e.g. {multi[0]}")
    other_rate = [(rel, info.sample_rate) for rel, info in infos.items()
                  if info.sample_rate != card.sample_rate]
    if other_rate:
        rates = sorted({r for _, r in other_rate})
        warnings.append(f"{len(other_rate)} file(s) are not at the card's {card.sample_rate} Hz "
                        f"(found {rates} Hz) and are resampled, e.g. {other_rate[0][0]}")
    if sorting.without_row:
        warnings.append(f"{len(sorting.without_row)} audio file(s) have no row in the label "
                        f"table and were skipped, e.g. {sorting.without_row[0]}")
    if table is not None and card.labels.source == "table":
        no_audio = sorted(set(table) - sorting.keys_seen)
        if no_audio:
            warnings.append(f"{len(no_audio)} subject(s) in the label table have no audio, "
                            f"e.g. {no_audio[0]}")
    return warnings


def build_manifest(card: Card | str | Path, root: str | Path | None = None, *,
                   label_map: dict[str, str] | None = None,
                   keep: list[str] | tuple[str, ...] | None = None,
                   max_bad_share: float = 0.05, min_seconds: float = 0.0) -> Manifest:
    """Build the manifest of one corpus.

    Args:
        card: a :class:`Card`, a card name or a path to a card.
        root: the corpus folder; ``None`` reads ``$<NAME>_ROOT``.
        label_map, keep: override the card's label mapping and filter (recipe overrides).
        max_bad_share: fail when more than this share of the audio files is unreadable or empty.
        min_seconds: files shorter than this (one analysis frame of the features) are skipped
            as ``too short``, as ``transfer.predict`` does: padded, they would become silent
            labelled segments.
    """
    card = card if isinstance(card, Card) else load_card(card)
    root = resolve_root(card, root)
    mapping = card.labels.map if label_map is None else label_map
    keep = tuple(card.labels.keep if keep is None else keep)
    final = card.final_labels(keep, mapping)

    paths = sorted(p for p in root.glob(card.audio.glob) if p.is_file())
    missed = _missed_by_glob(root, card.audio.glob, set(paths))
    if not paths:
        hint = f"; found {missed[0][0]} ({missed[0][1]})" if missed else ""
        raise UserError(f"corpus '{card.name}': no audio found under {root} "
                        f"matching '{card.audio.glob}' (card {card.path}){hint}")
    readers = {"table": _read_table, "lines": _read_lines}
    table = readers[card.labels.source](card, root) if card.labels.source in readers else None
    sorting = _label_files(card, root, paths, table, mapping, keep)
    sorting.unmatched = sorted(missed + sorting.unmatched)
    records, skipped, infos = _probe_files(card, sorting.labelled, min_seconds)
    warnings = _warnings(card, table, sorting, infos)
    considered = len(records) + len(skipped)
    if considered and len(skipped) / considered > max_bad_share:
        listing = "; ".join(f"{p}: {why}" for p, why in skipped[:3])
        raise UserError(f"corpus '{card.name}': {len(skipped)} of {considered} audio files are "
                        f"unusable ({_counts(reason_counts(skipped))}), more than the allowed "
                        f"share {max_bad_share:.0%} (max_bad_share), e.g. {listing}; "
                        f"python -m transfer.prepare --corpus {card.path} lists them all")
    if not records:
        raise UserError(f"corpus '{card.name}': none of the {len(paths)} audio file(s) under "
                        f"{root} is usable: " + _why_none(sorting, final) + f" (card {card.path})")
    frame = pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS)
    present = [lab for lab in final if lab in set(frame["label"])]
    return Manifest(card, root, frame, present, skipped, sorting.dropped, warnings,
                    sorting.unmatched, sorting.without_row, sorting.excluded)
