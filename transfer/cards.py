"""Corpus cards: a TOML file per corpus that says where the audio is and how to read labels.

A card is data, never code. ``datasets/README.md`` documents every key; in short:

- ``[audio]``: ``glob`` (relative to the corpus root) and a regular expression ``pattern``
  over the relative path whose named groups give the speaker (group ``speaker``, or a
  ``speaker_format`` such as ``"Ses{session}{gender}"``) and, for path-labelled corpora,
  the label (group ``label``); ``require`` keeps only files whose groups have given values.
- ``[labels]``: ``source`` = ``"path"`` | ``"table"`` | ``"lines"``; ``names`` (the raw label
  set), ``codes`` (raw code -> name), ``map`` (name -> name, e.g. exc -> hap), ``keep``
  (names kept after mapping), ``positive`` (for binary tasks), ``unit`` (what a label
  belongs to: ``subject``, ``recording`` or ``segment``).
- ``[segments]``: default segmenting for this corpus (seconds, mode).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer import REPO_ROOT, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CARDS_DIR = REPO_ROOT / "datasets"


@dataclass(frozen=True)
class AudioSpec:
    glob: str
    pattern: str
    speaker_format: str = "{speaker}"
    require: dict[str, str] = field(default_factory=dict)
    transcript: str = ""
    transcript_keep: str = ""


@dataclass(frozen=True)
class LabelSpec:
    names: tuple[str, ...]
    source: str = "path"  # path | table | lines
    codes: dict[str, str] = field(default_factory=dict)
    map: dict[str, str] = field(default_factory=dict)
    keep: tuple[str, ...] = ()
    positive: str = ""
    # what a label belongs to: subject | recording | segment; "" = subject for a table keyed
    # by speaker, else recording
    unit: str = ""
    # source = "table"
    files: tuple[str, ...] = ()
    key_column: str = ""
    label_column: str = ""
    key_group: str = "speaker"
    zero_pad: int = 0
    # source = "lines"
    line_glob: str = ""
    line_pattern: str = ""


@dataclass(frozen=True)
class SegmentDefaults:
    seconds: float = 10.0
    mode: str = "window"


@dataclass(frozen=True)
class Card:
    name: str
    description: str
    task: str
    sample_rate: int
    audio: AudioSpec
    labels: LabelSpec
    segments: SegmentDefaults = SegmentDefaults()
    root_env: str = ""
    path: str = ""

    @property
    def env_var(self) -> str:
        return self.root_env or f"{self.name.upper()}_ROOT"

    def final_labels(self, keep: tuple[str, ...] | None = None,
                     mapping: dict[str, str] | None = None) -> list[str]:
        """The label set after mapping and filtering, in a stable order."""
        mapping = self.labels.map if mapping is None else mapping
        keep = self.labels.keep if keep is None else keep
        names: list[str] = []
        for raw in self.labels.names:
            name = mapping.get(raw, raw)
            if name not in names and (not keep or name in keep):
                names.append(name)
        return names


_SECTIONS = {"audio": AudioSpec, "labels": LabelSpec, "segments": SegmentDefaults}
_TOP_KEYS = {"name", "description", "task", "sample_rate", "root_env"} | set(_SECTIONS)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from None


def parse_card(data: dict[str, Any], path: str = "<card>") -> Card:
    """Validate a card already read from TOML."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"card {path}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "sample_rate", "audio", "labels"):
        if key not in data:
            raise UserError(f"card {path}: missing required key '{key}'")
    sections = {k: _build(cls, data.get(k, {}), f"card {path} [{k}]") for k, cls in _SECTIONS.items()
                if k in data}
    labels: LabelSpec = sections["labels"]
    if labels.source not in ("path", "table", "lines"):
        raise UserError(f"card {path}: labels.source must be 'path', 'table' or 'lines', "
                        f"not {labels.source!r}")
    if labels.source == "table" and not (labels.files and labels.key_column and labels.label_column):
        raise UserError(f"card {path}: labels.source = 'table' needs files, key_column, label_column")
    if labels.source == "lines" and not (labels.line_glob and labels.line_pattern):
        raise UserError(f"card {path}: labels.source = 'lines' needs line_glob and line_pattern")
    if labels.unit not in ("", "subject", "recording", "segment"):
        raise UserError(f"card {path}: labels.unit must be 'subject', 'recording' or 'segment', "
                        f"not {labels.unit!r}")
    return Card(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        task=str(data.get("task", "emotion")),
        sample_rate=int(data["sample_rate"]),
        root_env=str(data.get("root_env", "")),
        path=path,
        **sections,
    )


def available_cards() -> list[str]:
    """Names of the cards shipped in ``datasets/``."""
    return sorted(p.stem for p in CARDS_DIR.glob("*.toml"))


def load_card(name_or_path: str | Path) -> Card:
    """Load a card by name (``datasets/<name>.toml``) or by path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        path = candidate
    else:
        path = CARDS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UserError(f"no corpus card {str(name_or_path)!r}: looked for {path}; "
                        f"shipped cards: {', '.join(available_cards())} "
                        "(or give the path of your own card .toml)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"card {path} is not valid TOML: {err}") from None
    return parse_card(data, str(path))
