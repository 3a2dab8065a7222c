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
- ``[segments]``: default segmenting for this corpus (seconds, mode; also overlap_s, align):
  :class:`transfer.common.config.SegmentsConfig`, the recipe's overrides.
- ``[covariates]``: subject covariates (gender, age, ...) as columns of the label table, for
  subgroup reports (:mod:`transfer.data.covariate_spec`).
"""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from transfer import REPO_ROOT, UserError
from transfer.common import options
from transfer.common.config import SegmentsConfig
from transfer.data.covariate_spec import CovariateSpec, check_covariates, parse_covariates

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _cards_dir() -> Path:
    """``datasets/`` in a checkout; in an installed wheel the cards ship as ``transfer/_cards``.

    The wheel location is tried first: next to an installed ``transfer`` the folder
    ``datasets`` may well be Hugging Face's package, which holds no cards.
    """
    shipped = Path(__file__).resolve().parents[1] / "_cards"
    return shipped if shipped.is_dir() else REPO_ROOT / "datasets"


CARDS_DIR = _cards_dir()


@dataclass(frozen=True)
class AudioSpec:
    """A card's ``[audio]``: which files, and the pattern that names speaker and label."""
    glob: str
    pattern: str
    speaker_format: str = "{speaker}"
    require: dict[str, str] = field(default_factory=dict)
    transcript: str = ""
    transcript_keep: str = ""


@dataclass(frozen=True)
class LabelSpec:
    """A card's ``[labels]``: where labels come from and how they are mapped."""
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
class Card:
    """A corpus card, checked (:func:`parse_card`)."""
    name: str
    description: str
    task: str
    sample_rate: int
    audio: AudioSpec
    labels: LabelSpec
    # default segmenting: the recipe's [target] / [source] segments override it
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    root_env: str = ""
    path: str = ""
    covariates: tuple[CovariateSpec, ...] = ()

    @property
    def env_var(self) -> str:
        """The environment variable that names the corpus folder."""
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


_SECTIONS = {"audio": AudioSpec, "labels": LabelSpec, "segments": SegmentsConfig}
_TOP_KEYS = ({"name", "description", "task", "sample_rate", "root_env", "covariates"}
             | set(_SECTIONS))


def _build(cls: type, data: Any, where: str) -> Any:
    """A card section (a dataclass) from its TOML table, checked like every options dataclass
    (:func:`transfer.common.options.build`)."""
    return options.build(cls, data, options.Naming(where, noun="key"))


def _regex(text: str, where: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as err:
        raise UserError(f"{where} is not a valid regular expression ({err}): {text!r}") from None


def _fields(fmt: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as err:
        raise UserError(f"{where} is not a valid format string ({err}): {fmt!r}") from None


def _check_glob(pattern: str, where: str) -> None:
    """A glob is a non-empty pattern relative to the corpus root that stays inside it."""
    parts = PurePosixPath(pattern).parts
    if not pattern or pattern.startswith(("/", "\\")) or ".." in parts or "\0" in pattern:
        raise UserError(f"{where} must be a non-empty pattern relative to the corpus root, "
                        f"without '..' (e.g. \"*/*.wav\"), got {pattern!r}")


def _check_top(data: dict[str, Any], path: str) -> None:
    """The card's top-level values: strings, a file-name-safe name, a sample rate."""
    for key in ("name", "description", "task", "root_env"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"card {path}: '{key}' must be a string, got {data[key]!r}")
    if not re.fullmatch(r"\w[\w.-]*", data["name"]):  # it names cache files and $<NAME>_ROOT
        raise UserError(f"card {path}: 'name' must be letters, digits, '_', '.' or '-' (it names "
                        f"cache files), got {data['name']!r}")
    rate = data["sample_rate"]
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise UserError(f"card {path}: 'sample_rate' must be a positive integer (Hz), got {rate!r}")


def _check_card(data: dict[str, Any], sections: dict[str, Any], path: str) -> None:
    """Values that parse but cannot work: wrong top-level types, bad regexes, missing groups."""
    _check_top(data, path)
    audio: AudioSpec = sections["audio"]
    labels: LabelSpec = sections["labels"]
    _check_glob(audio.glob, f"card {path} [audio] glob")
    if labels.source == "lines":
        _check_glob(labels.line_glob, f"card {path} [labels] line_glob")
    groups = set(_regex(audio.pattern, f"card {path} [audio] pattern").groupindex)
    speaker = _fields(audio.speaker_format, f"card {path} [audio] speaker_format")
    needed = {
        "[audio] speaker_format": speaker,
        "[audio] require": set(audio.require),
        "labels.source = 'path'": {"label"} if labels.source == "path" else set(),
        "[labels] key_group": {labels.key_group} if labels.source != "path" else set(),
    }
    for what, names in needed.items():
        missing = sorted(names - groups)
        if missing:
            raise UserError(f"card {path}: {what} needs the named group(s) {missing} in "
                            f"[audio] pattern, which has {sorted(groups)}")
    if audio.transcript and _fields(audio.transcript, f"card {path} [audio] transcript") - {"speaker"}:
        raise UserError(f"card {path}: [audio] transcript may only use {{speaker}}, "
                        f"got {audio.transcript!r}")
    if labels.source == "lines":
        line_groups = set(_regex(labels.line_pattern, f"card {path} [labels] line_pattern").groupindex)
        if not {"key", "label"} <= line_groups:
            raise UserError(f"card {path}: [labels] line_pattern needs the named groups "
                            f"'key' and 'label', has {sorted(line_groups)}")
    if not labels.names:
        raise UserError(f"card {path}: [labels] names must list at least one label")
    if labels.zero_pad < 0:
        raise UserError(f"card {path}: [labels] zero_pad must be >= 0, got {labels.zero_pad}")


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
    _check_card(data, sections, path)
    card = Card(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        task=str(data.get("task", "emotion")),
        sample_rate=int(data["sample_rate"]),
        root_env=str(data.get("root_env", "")),
        path=path,
        covariates=parse_covariates(data.get("covariates", {}), path),
        **sections,
    )
    check_covariates(card)
    return card


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
    return parse_card(read_toml(path, "card"), str(path))


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file (a card, a recipe) as data; one-line errors for a file that is not UTF-8
    text, not valid TOML, or unreadable."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                        f"position {err.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{what} {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None
