"""Reading audio and cutting it into fixed-length segments.

How a recording becomes segments is :class:`transfer.common.config.SegmentSpec` (the one
segment spec: its modes and lengths are declared and checked there); :func:`cut` applies it.
The defaults follow the research code the toolkit grew out of: resample to 16 kHz, 10-s
segments, and in ``window`` mode 2.5 s of overlap between successive windows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import soxr

from transfer import UserError
from transfer.common.config import SegmentSpec

__all__ = ["AudioInfo", "SegmentSpec", "cut", "load_audio", "probe", "read_turns"]


@dataclass(frozen=True)
class AudioInfo:
    """What the header of a usable audio file says."""

    seconds: float
    sample_rate: int
    channels: int


def _wav_shortfall(path: str, size: int) -> tuple[int, int] | None:
    """(bytes the ``data`` chunk promises, bytes the file holds) of a RIFF/WAVE file whose data
    chunk claims at least one whole frame more than the file holds; None otherwise.

    libsndfile reads such a file (a copy cut short, a write interrupted by a crash) without
    complaint, shortened to what is there; a 100-byte stub of a 3-s recording becomes a 2-ms
    clip that would be padded into a silent, labelled segment.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos, block = 12, 1
        while True:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                fmt = fh.read(16)
                block = max(1, int.from_bytes(fmt[12:14], "little")) if len(fmt) >= 14 else 1
            elif cid == b"data":
                present = size - (pos + 8)
                if length != 0xFFFFFFFF and length - present >= block:  # 0xFFFFFFFF: streamed
                    return length, max(present, 0)
                return None
            pos += 8 + length + (length & 1)


#: Float audio is nominally within [-1, 1] and files written on an integer scale reach 32768;
#: a sample beyond 1e6 is no recording (garbage or a wrong scale), and near 1e16 the float32
#: power spectrum of the features overflows to inf.
MAX_FLOAT_PEAK = 1e6

#: Decoders of lossy formats may drop the encoder's delay and padding, up to two MPEG frames of
#: 1152 samples: a file that decodes to fewer frames than its header promises by more than
#: this is truncated.
DECODE_SLACK = 2 * 1152


def probe(path: str | os.PathLike) -> AudioInfo | str:
    """The header facts of an audio file, or the reason it cannot be used.

    Reasons start with a short class (``empty file``, ``unreadable``, ``truncated``,
    ``zero-length audio``, ``non-finite samples``, ``out of range``), then ``:`` and the
    details. A WAV file's header is checked against its size; every other file (FLAC, MP3,
    ...) and every file stored as floats is decoded in full, so that a truncated or damaged
    stream, NaN/inf samples or absurd float values are found here, not halfway through a
    corpus' feature extraction.
    """
    path = str(path)
    try:
        size = os.stat(path).st_size
        if size == 0:
            return "empty file (0 bytes)"
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types
        return f"unreadable: {str(err).strip() or type(err).__name__}"
    if info.frames == 0:
        return "zero-length audio (0 frames)"
    if info.format == "WAV":
        short = _wav_shortfall(path, size)
        if short is not None:
            promised, present = short
            return (f"truncated: the header promises {promised} bytes of audio, the file holds "
                    f"{present} ({present / promised:.0%})")
    if info.format != "WAV" or info.subtype in ("FLOAT", "DOUBLE"):
        problem = _decode_problem(path, info)
        if problem:
            return problem
    return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.channels))


def _decode_problem(path: str, info: Any) -> str:
    """Decode a whole file block by block: the reason it cannot be used, or ""."""
    frames, bad, peak = 0, 0, 0.0
    try:
        with sf.SoundFile(path) as fh:
            while True:
                block = fh.read(1 << 16, dtype="float32", always_2d=True)  # (frames, channels)
                if not len(block):
                    break
                frames += len(block)
                finite = np.isfinite(block)
                bad += int(block.size - np.count_nonzero(finite))
                if finite.any():
                    peak = max(peak, float(np.abs(block[finite]).max()))
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types
        rate = info.samplerate
        return (f"truncated: decoding fails after {frames / rate:.2f} of the {info.frames / rate:.2f}"
                f" s the header promises ({str(err).strip() or type(err).__name__})")
    if bad:
        return f"non-finite samples: {bad} NaN/inf sample(s)"
    if peak > MAX_FLOAT_PEAK:
        return (f"out of range: samples up to {peak:.3g}, where audio lies within [-1, 1] "
                f"(files on an integer scale: 32768)")
    if info.frames - frames > DECODE_SLACK:
        rate = info.samplerate
        return (f"truncated: the header promises {info.frames / rate:.2f} s, the file decodes "
                f"to {frames / rate:.2f} s ({frames / info.frames:.0%})")
    return ""


def _non_finite(audio: np.ndarray) -> int:
    return int(audio.size - np.count_nonzero(np.isfinite(audio)))


def load_audio(path: str, sample_rate: int, *, keep_turns: list[tuple[float, float]] | None = None
               ) -> np.ndarray:
    """Read a file as mono float32 at ``sample_rate`` (resampled with soxr when needed).

    ``keep_turns``: (start_s, stop_s) spans to keep and concatenate (DAIC-WOZ participant turns).
    NaN or inf samples are an error naming the file: they would poison every feature.
    """
    try:
        audio, native = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot read audio {path}: {err}") from None
    bad = _non_finite(audio)
    if bad:
        raise UserError(f"audio {path} has {bad} non-finite sample(s) (NaN/inf); fix or remove "
                        "the file")
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
    if spec.mode == "window":  # the spec's modes: transfer.common.config.SegmentMode
        hop = length - int(round(spec.overlap_s * spec.sample_rate))
        starts = list(range(0, max(x.shape[0] - (length - hop), 1), hop))
    else:  # concat: back-to-back pieces; a last piece shorter than half a segment is dropped
        starts = [s for s in range(0, x.shape[0], length) if x.shape[0] - s >= length // 2 or s == 0]
    segments = [_fit(x[s:s + length], length, "start") for s in starts]
    return segments, [s / spec.sample_rate for s in starts]
