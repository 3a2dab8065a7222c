"""Segment features (MFCC-39, log-mel, or self-supervised model states) with a content-addressed
cache.

The cache key covers the manifest's files (path, size, mtime), the segment and feature
settings and :data:`FEATURE_VERSION`; bump the version whenever extraction code changes
what it produces. Cache files carry their checksum (:mod:`transfer.common.cache`): a damaged one is
reported and rebuilt, and two processes that need the same features extract them once.
Self-supervised features (``kind = "ssl"``) live in :mod:`transfer.data.ssl`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from transfer import UserError
from transfer.common.cache import (
    cache_dir,
    content_hash,
    discard_entry,
    entry_lock,
    find_entry,
    store_entry,
)
from transfer.common.lifeline import die_with_parent
from transfer.data.audio import SegmentSpec, cut, load_audio, read_turns
from transfer.data.corpora import Manifest

FEATURE_VERSION = 1
KINDS = ("mfcc", "logmel", "ssl")
_SSL_FIELDS = ("model", "layers", "pool_frames")

#: Frames a segment must give: librosa's smallest delta window is 3 frames, and a model learns
#: no timing from fewer.
MIN_FRAMES = 3

#: The receptive field of one frame of the wav2vec 2.0 / HuBERT / WavLM convolutional front
#: (25 ms at 16 kHz): audio shorter than this gives no ssl frame.
SSL_MIN_SAMPLES = 400

#: Recordings per extraction job (one subject per job in concat mode).
JOB_FILES = 16


@dataclass(frozen=True)
class FeatureSpec:
    """Frame-level features of a segment.

    Args:
        kind: ``mfcc`` (``n_mfcc`` coefficients plus ``deltas`` orders of deltas: 13 x 3 = 39
            by default, the research code's "order 3") or ``logmel`` (``n_mels`` log-mel bands).
        n_fft, hop: STFT window and hop in samples (800 = 50 ms and 512 at 16 kHz: 10 s -> 313
            frames).
        n_mels: mel bands (the MFCC filterbank, or the log-mel features).
        model, layers, pool_frames: ``ssl``: the checkpoint folder, the hidden states (an index,
            indices to average, or ``"all"``) and temporal average pooling (see
            :mod:`transfer.data.ssl`); the STFT settings do not apply there.
    """

    kind: str = "mfcc"
    n_mfcc: int = 13
    deltas: int = 2
    n_fft: int = 800
    hop: int = 512
    n_mels: int = 128
    model: str = ""
    layers: int | tuple[int, ...] | str = "all"
    pool_frames: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"features.kind must be one of {list(KINDS)}, not {self.kind!r}")
        if self.deltas not in (0, 1, 2):
            raise UserError(f"features.deltas must be 0, 1 or 2, not {self.deltas}")
        for name in ("n_mfcc", "n_fft", "hop", "n_mels", "pool_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"features.{name} must be an integer >= 1, got {value!r}")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise UserError(f"features.n_mfcc ({self.n_mfcc}) must be <= features.n_mels "
                            f"({self.n_mels}): the MFCC are the DCT of n_mels mel bands, so "
                            "there are at most n_mels of them")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.kind == "ssl":
            from transfer.data.ssl import check_spec

            check_spec(self)

    @property
    def dim(self) -> int:
        if self.kind == "ssl":
            from transfer.data.ssl import feature_dim

            return feature_dim(self)
        return self.n_mfcc * (1 + self.deltas) if self.kind == "mfcc" else self.n_mels

    def frames(self, samples: int) -> int:
        if self.kind == "ssl":
            from transfer.data.ssl import frames

            return frames(self, samples)
        return 1 + samples // self.hop

    @property
    def min_samples(self) -> int:
        """The shortest audio that gives one analysis frame: the STFT window (mfcc, logmel) or
        the ssl front's receptive field."""
        return SSL_MIN_SAMPLES if self.kind == "ssl" else self.n_fft


def check_segments(seg: SegmentSpec, feat: FeatureSpec, seconds_key: str = "segments.seconds",
                   prefix: str = "") -> None:
    """A segment gives at least :data:`MIN_FRAMES` feature frames (else a one-line error that
    names the settings and the largest ``hop`` or the shortest ``seconds`` that works).

    ``seconds_key``: how the user sets the segment length (``target.segments.seconds``,
    ``--seconds``); ``prefix``: what the error starts with (the corpus)."""
    frames = feat.frames(seg.length)
    if frames >= MIN_FRAMES:
        return
    if feat.kind == "ssl":
        fix = f"use a longer {seconds_key} or a smaller features.pool_frames"
    else:
        longest_hop = seg.length // (MIN_FRAMES - 1)
        shortest = (MIN_FRAMES - 1) * feat.hop / seg.sample_rate
        fix = (f"use features.hop <= {longest_hop}" if longest_hop >= 1 else "") + (
            " or " if longest_hop >= 1 else "use ") + f"{seconds_key} >= {shortest:g}"
    how = f"pool_frames {feat.pool_frames}" if feat.kind == "ssl" else f"hop {feat.hop}"
    raise UserError(f"{prefix}a segment of {seg.seconds:g} s gives {frames} feature frame(s) "
                    f"({feat.kind}, {how}); at least {MIN_FRAMES} are needed: {fix}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(manifest: Manifest, seg: SegmentSpec, feat: FeatureSpec) -> None:
    """Refuse, before extracting, features that cannot fit in memory (a segment length of
    hours): the features of every segment plus one extraction job's audio and spectrogram,
    a lower bound of what extraction needs."""
    avail = available_memory()
    durations = manifest.frame["duration_s"].to_numpy(float)
    if avail is None or not len(durations):
        return
    if seg.mode == "window":
        hop = seg.seconds - seg.overlap_s
        per_file = np.maximum(1, np.ceil((durations - seg.overlap_s) / hop))
    elif seg.mode == "concat":
        totals = manifest.frame.groupby("speaker")["duration_s"].sum().to_numpy(float)
        per_file = np.maximum(1, np.ceil(totals / seg.seconds))
    else:
        per_file = np.ones(len(durations))
    frames = feat.frames(seg.length)
    features = float(per_file.sum()) * feat.dim * frames * 4  # float32
    # one job: up to JOB_FILES recordings' segments as float32 audio and an STFT of
    # n_fft // 2 + 1 complex64 bins per frame
    per_segment = seg.length * 4 + (feat.n_fft // 2 + 1) * frames * 8
    job = float(np.sort(per_file)[-JOB_FILES:].sum()) * per_segment
    if features + job > avail:
        raise UserError(f"corpus '{manifest.name}': {int(per_file.sum())} segments of "
                        f"{seg.seconds:g} s need about {(features + job) / 2**30:.1f} GiB of memory "
                        f"to extract and hold ({feat.dim} x {frames} float32 features each), more "
                        f"than the {avail / 2**30:.1f} GiB available; use shorter segments")


def extract(segments: np.ndarray, sample_rate: int, spec: FeatureSpec) -> np.ndarray:
    """Features of a batch of equal-length segments.

    Shape: (N, samples) -> (N, spec.dim, frames), float32.
    """
    if spec.kind == "ssl":
        from transfer.data.ssl import extract as ssl_extract

        return ssl_extract(segments, sample_rate, spec)
    import librosa  # heavy import kept out of module import time

    if spec.kind == "logmel":
        mel = librosa.feature.melspectrogram(y=segments, sr=sample_rate, n_fft=spec.n_fft,
                                             hop_length=spec.hop, n_mels=spec.n_mels)
        return librosa.power_to_db(mel, ref=1.0).astype(np.float32)
    mfcc = librosa.feature.mfcc(y=segments, sr=sample_rate, n_mfcc=spec.n_mfcc, n_fft=spec.n_fft,
                                hop_length=spec.hop, n_mels=spec.n_mels)  # (N, n_mfcc, T)
    parts = [mfcc]
    width = min(9, mfcc.shape[-1] - (1 - mfcc.shape[-1] % 2))  # odd, <= frames
    for order in range(1, spec.deltas + 1):
        parts.append(librosa.feature.delta(mfcc, order=order, width=max(width, 3), axis=-1))
    return np.concatenate(parts, axis=1).astype(np.float32)


@dataclass
class FeatureSet:
    """Features of every segment of a corpus, with where each segment came from.

    ``x``: (N, dim, frames) float32; ``segments``: one row per segment with columns
    ``file`` (source path), ``speaker``, ``label``, ``start_s``.
    """

    x: np.ndarray
    segments: pd.DataFrame
    key: str
    cache_hit: bool
    seconds: float

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)


def _job(args: tuple) -> tuple[np.ndarray, list[tuple[str, str, str, float]]]:
    """Worker: a group of recordings -> their segments' features and metadata."""
    waves, meta = _waves(args)
    return extract(waves, args[1].sample_rate, args[2]), meta


def _waves(args: tuple) -> tuple[np.ndarray, list[tuple[str, str, str, float]]]:
    """Worker: a group of recordings -> their segments (N, samples) and metadata."""
    items, seg, _feat, transcripts = args
    waves, meta = [], []
    for group in items:  # a group = one file, or a subject's files in concat mode
        audio = []
        for path, _speaker, _label in group:
            turns = None
            if transcripts:
                tpath, keep = transcripts[path]
                turns = read_turns(tpath, keep) if tpath and os.path.exists(tpath) else None
            audio.append(load_audio(path, seg.sample_rate, keep_turns=turns))
        joined = np.concatenate(audio) if len(audio) > 1 else audio[0]
        pieces, starts = cut(joined, seg)
        path, speaker, label = group[0]
        waves.extend(pieces)
        meta.extend((path, speaker, label, s) for s in starts)
    return np.stack(waves), meta


def _groups(frame: pd.DataFrame, mode: str) -> list[list[tuple[str, str, str]]]:
    rows = list(zip(frame["path"], frame["speaker"], frame["label"], strict=True))
    if mode != "concat":
        return [[r] for r in rows]
    by_speaker: dict[str, list] = {}
    for r in rows:
        by_speaker.setdefault(r[1], []).append(r)
    return list(by_speaker.values())


def cache_key(manifest: Manifest, seg: SegmentSpec, feat: FeatureSpec) -> str:
    files = []
    for path, label, speaker in zip(manifest.frame["path"], manifest.frame["label"],
                                    manifest.frame["speaker"], strict=True):
        st = os.stat(path)
        files.append((path, st.st_size, st.st_mtime_ns, label, speaker))
    turns = manifest.card.audio.transcript
    features = asdict(feat)
    if feat.kind == "ssl":  # the checkpoint's content hash, the layers and the pooling
        from transfer.data.ssl import cache_fields

        features = cache_fields(feat)
    else:  # keys of MFCC/log-mel features stay what they were before ssl existed
        for name in _SSL_FIELDS:
            features.pop(name)
    return content_hash({"files": files, "segments": asdict(seg), "features": features,
                         "transcript": turns, "version": FEATURE_VERSION}, 24)


def load_features(manifest: Manifest, seg: SegmentSpec, feat: FeatureSpec, *,
                  workers: int | None = None, progress: bool = True,
                  root: Path | None = None) -> FeatureSet:
    """Features of every segment of ``manifest``, from the cache or freshly extracted.

    Extraction runs in ``workers`` processes (default: one per core; in-process for small
    corpora) and shows a progress bar. With ``kind = "ssl"`` the workers only read and cut the
    audio and the model runs in this process (:func:`transfer.data.ssl.run_jobs`).
    """
    t0 = time.perf_counter()
    check_segments(seg, feat)
    key = cache_key(manifest, seg, feat)
    folder, stem = (root or cache_dir()) / "features", f"{manifest.name}-{key}"
    cached = _load_cached(folder, stem)  # no lock on the common path: a verified load
    if cached is None:
        with entry_lock(folder, stem, f"the features of {manifest.name}"):
            cached = _load_cached(folder, stem)
            if cached is None:
                check_memory(manifest, seg, feat)
                x, segments = _extract_all(manifest, seg, feat, workers, progress)
                store_entry(folder, stem, ".npz", lambda tmp: _save(tmp, x, segments))
                return FeatureSet(x, segments, key, False, time.perf_counter() - t0)
    x, segments = cached
    return FeatureSet(x, segments, key, True, time.perf_counter() - t0)


def _load_cached(folder: Path, stem: str) -> tuple[np.ndarray, pd.DataFrame] | None:
    """A verified cache entry, or None (a damaged one is reported and removed)."""
    path = find_entry(folder, stem, ".npz")
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            x = data["x"]
            segments = pd.DataFrame({"file": data["source"], "speaker": data["speaker"],
                                     "label": data["label"], "start_s": data["start_s"]})
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - whatever a bad file raises, it is rebuilt
        discard_entry(path, f"cannot be loaded: {type(err).__name__}: {err}")
        return None
    if x.ndim != 3 or len(segments) != x.shape[0]:
        discard_entry(path, f"inconsistent arrays: x {x.shape}, {len(segments)} segment rows")
        return None
    return x, segments


def _save(path: Path, x: np.ndarray, segments: pd.DataFrame) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, x=x, source=segments["file"].to_numpy(str),
                 speaker=segments["speaker"].to_numpy(str),
                 label=segments["label"].to_numpy(str),
                 start_s=segments["start_s"].to_numpy(np.float64))


def _extract_all(manifest: Manifest, seg: SegmentSpec, feat: FeatureSpec, workers: int | None,
                 progress: bool) -> tuple[np.ndarray, pd.DataFrame]:
    groups = _groups(manifest.frame, seg.mode)
    transcripts = {}
    if manifest.card.audio.transcript:
        for p, spk, _ in (g for grp in groups for g in grp):
            rel = manifest.card.audio.transcript.format(speaker=spk)
            transcripts[p] = (str(manifest.root / rel), manifest.card.audio.transcript_keep)
    chunk = JOB_FILES if seg.mode != "concat" else 1
    jobs = [(groups[i:i + chunk], seg, feat, transcripts) for i in range(0, len(groups), chunk)]
    if workers is None:
        workers = min(os.cpu_count() or 1, len(jobs)) if len(groups) >= 64 else 1
    if feat.kind == "ssl":  # the model runs here, batched, on the GPU when there is one
        from transfer.data.ssl import run_jobs

        results = run_jobs(jobs, workers, progress, f"ssl features {manifest.name}", _waves)
    else:
        results = _run_jobs(jobs, workers, progress, f"features {manifest.name}")
    x = np.concatenate([r[0] for r in results])
    meta = [m for r in results for m in r[1]]
    segments = pd.DataFrame.from_records(meta, columns=["file", "speaker", "label", "start_s"])
    return x, segments


def _run_jobs(jobs: list, workers: int, progress: bool, title: str) -> list:
    from transfer.common.progress import progress_bar

    results: list = [None] * len(jobs)
    with progress_bar(progress) as bar:
        task = bar.add_task(title, total=len(jobs))
        if workers <= 1:
            for i, job in enumerate(jobs):
                results[i] = _job(job)
                bar.advance(task)
        else:
            # spawn: never fork a parent that may hold torch/OpenMP threads
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                     initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                for i, res in enumerate(pool.map(_job, jobs)):
                    results[i] = res
                    bar.advance(task)
    return results
