"""Reading audio and cutting it into fixed-length segments (DESIGN section 4).

Modes:
    pad     shorter -> zero-padded, longer -> truncated (one segment per file)
    window  longer -> windows of ``seconds`` with ``overlap_s`` overlap, the last one
            zero-padded; shorter -> padded
    concat  a subject's recordings are concatenated, then cut into ``seconds`` pieces
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import soundfile as sf
import soxr

from transfer import UserError

MODES = ("pad", "window", "concat")


@dataclass(frozen=True)
class SegmentSpec:
    """How recordings become fixed-length segments.

    Args:
        seconds: segment length.
        mode: ``pad`` | ``window`` | ``concat``.
        overlap_s: overlap between successive windows (``window`` mode).
        align: where a short clip sits in its padded segment, and which part of a long clip
            ``pad`` keeps: ``start`` (research code) or ``center`` (official TIM-Net features).
        sample_rate: every recording is resampled (soxr) to this rate first.
    """

    seconds: float = 10.0
    mode: str = "window"
    overlap_s: float = 2.5
    align: str = "start"
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"segments.mode must be one of {list(MODES)}, not {self.mode!r}")
        if self.align not in ("start", "center"):
            raise UserError(f"segments.align must be 'start' or 'center', not {self.align!r}")
        overlap_ok = self.mode != "window" or 0 <= self.overlap_s < self.seconds
        if self.seconds <= 0 or not overlap_ok:
            raise UserError("segments need seconds > 0 and 0 <= overlap_s < seconds, got "
                            f"seconds={self.seconds}, overlap_s={self.overlap_s}")

    @property
    def length(self) -> int:
        """Segment length in samples."""
        return int(round(self.seconds * self.sample_rate))


def load_audio(path: str, sample_rate: int, *, keep_turns: list[tuple[float, float]] | None = None
               ) -> np.ndarray:
    """Read a file as mono float32 at ``sample_rate`` (resampled with soxr when needed).

    ``keep_turns``: (start_s, stop_s) spans to keep and concatenate (DAIC-WOZ participant turns).
    """
    try:
        audio, native = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot read audio {path}: {err}") from None
    mono = audio.mean(axis=1)
    if keep_turns:
        pieces = [mono[int(a * native):int(b * native)] for a, b in keep_turns]
        mono = np.concatenate(pieces) if pieces else mono[:0]
    if native != sample_rate and mono.size:
        mono = soxr.resample(mono, native, sample_rate, quality="HQ").astype(np.float32)
    return mono


def read_turns(transcript: str, keep_speaker: str) -> list[tuple[float, float]]:
    """(start, stop) of one speaker's turns in a DAIC-WOZ style tab-separated transcript."""
    table = pd.read_csv(transcript, sep="\t")
    table.columns = [str(c).strip().lower() for c in table.columns]
    rows = table[table["speaker"].astype(str).str.strip() == keep_speaker]
    return [(float(a), float(b)) for a, b in zip(rows["start_time"], rows["stop_time"], strict=True)]


def _fit(x: np.ndarray, length: int, align: str) -> np.ndarray:
    """Zero-pad or crop ``x`` to ``length`` samples."""
    n = x.shape[0]
    if n == length:
        return x
    if n > length:
        start = (n - length) // 2 if align == "center" else 0
        return x[start:start + length]
    out = np.zeros(length, dtype=np.float32)
    start = (length - n) // 2 if align == "center" else 0
    out[start:start + n] = x
    return out


def cut(x: np.ndarray, spec: SegmentSpec) -> tuple[list[np.ndarray], list[float]]:
    """Cut one waveform into segments. Returns the segments and their start times (s)."""
    length = spec.length
    if spec.mode == "pad" or x.shape[0] <= length:
        return [_fit(x, length, spec.align)], [0.0]
    if spec.mode == "window":
        hop = length - int(round(spec.overlap_s * spec.sample_rate))
        starts = list(range(0, max(x.shape[0] - (length - hop), 1), hop))
    else:  # concat: back-to-back pieces; a last piece shorter than half a segment is dropped
        starts = [s for s in range(0, x.shape[0], length) if x.shape[0] - s >= length // 2 or s == 0]
    segments = [_fit(x[s:s + length], length, "start") for s in starts]
    return segments, [s / spec.sample_rate for s in starts]
