"""Segment features of any registered kind (:mod:`transfer.data.kinds`: MFCC-39, log-mel,
self-supervised model states, ...) with a content-addressed cache.

The cache key covers the manifest's files (path, size, mtime), the segment and feature
settings and :data:`FEATURE_VERSION`; bump the version whenever extraction code changes
what it produces. Cache files carry their checksum (:mod:`transfer.common.cache`): a damaged one is
reported and rebuilt, and two processes that need the same features extract them once.
A changed key (other settings, or a key computed differently after an update) is a
miss: the features are extracted again under the new key, and the old entry is left alone.
"""

from __future__ import annotations

import logging
import os
import re
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
from transfer.common.config import FeatureSpec, SegmentSpec
from transfer.common.lifeline import die_with_parent
from transfer.data.audio import cut, load_audio, read_turns
from transfer.data.corpora import Manifest
from transfer.data.kinds import bind

log = logging.getLogger(__name__)

FEATURE_VERSION = 1

#: Frames a segment must give: librosa's smallest delta window is 3 frames, and a model learns
#: no timing from fewer.
MIN_FRAMES = 3

#: Recordings per extraction job (one subject per job in concat mode).
JOB_FILES = 16


def check_segments(seg: SegmentSpec, feat: FeatureSpec, seconds_key: str = "segments.seconds",
                   prefix: str = "") -> None:
    """A segment gives at least :data:`MIN_FRAMES` feature frames (else a one-line error that
    names the settings and what to change: the kind's :meth:`~FeatureKind.fewer_frames_fix`).

    ``seconds_key``: how the user sets the segment length (``target.segments.seconds``,
    ``--seconds``); ``prefix``: what the error starts with (the corpus)."""
    bound = bind(feat)
    frames = bound.frames(seg.length)
    if frames >= MIN_FRAMES:
        return
    fix = bound.kind.fewer_frames_fix(bound.opts, seg, seconds_key, MIN_FRAMES)
    how = bound.kind.frame_setting(bound.opts)
    raise UserError(f"{prefix}a segment of {seg.seconds:g} s gives {frames} feature frame(s) "
                    f"({feat.kind}{', ' + how if how else ''}); at least {MIN_FRAMES} are needed: "
                    f"{fix}")


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
    bound = bind(feat)
    frames = bound.frames(seg.length)
    features = float(per_file.sum()) * bound.dim * frames * 4  # float32
    # one job: up to JOB_FILES recordings' segments as float32 audio and what extracting one
    # segment needs besides (an STFT)
    per_segment = seg.length * 4 + bound.kind.work_bytes(bound.opts, frames)
    job = float(np.sort(per_file)[-JOB_FILES:].sum()) * per_segment
    if features + job > avail:
        raise UserError(f"corpus '{manifest.name}': {int(per_file.sum())} segments of "
                        f"{seg.seconds:g} s need about {(features + job) / 2**30:.1f} GiB of memory "
                        f"to extract and hold ({bound.dim} x {frames} float32 features each), more "
                        f"than the {avail / 2**30:.1f} GiB available; use shorter segments")


def extract(segments: np.ndarray, sample_rate: int, spec: FeatureSpec) -> np.ndarray:
    """Features of a batch of equal-length segments, by the spec's kind
    (:mod:`transfer.data.kinds`).

    Shape: (N, samples) -> (N, dim, frames), float32.
    """
    return bind(spec).extract(segments, sample_rate)


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
        """(N, dim, frames)."""
        return tuple(self.x.shape)


def _job(args: tuple) -> tuple[np.ndarray, list[tuple[str, str, str, float]]]:
    """Worker: a group of recordings -> their segments' features and metadata."""
    waves, meta = _waves(args)
    return args[2].extract(waves, args[1].sample_rate), meta


def _waves(args: tuple) -> tuple[np.ndarray, list[tuple[str, str, str, float]]]:
    """Worker: a group of recordings -> their segments (N, samples) and metadata."""
    items, seg, _bound, transcripts = args
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
    """The features' cache key: the manifest's files (path, size, mtime, label, speaker), the
    segment spec, what determines the features (:meth:`FeatureKind.cache_fields`: the kind and
    its options; for ssl the checkpoint's content), a transcript rule and
    :data:`FEATURE_VERSION`."""
    files = []
    for path, label, speaker in zip(manifest.frame["path"], manifest.frame["label"],
                                    manifest.frame["speaker"], strict=True):
        st = os.stat(path)
        files.append((path, st.st_size, st.st_mtime_ns, label, speaker))
    bound = bind(feat)
    return content_hash({"files": files, "segments": asdict(seg),
                         "features": bound.kind.cache_fields(bound.opts),
                         "transcript": manifest.card.audio.transcript,
                         "version": FEATURE_VERSION}, 24)


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
                _note_other_settings(folder, manifest.name, key)
                check_memory(manifest, seg, feat)
                x, segments = _extract_all(manifest, seg, feat, workers, progress)
                store_entry(folder, stem, ".npz", lambda tmp: _save(tmp, x, segments))
                return FeatureSet(x, segments, key, False, time.perf_counter() - t0)
    x, segments = cached
    return FeatureSet(x, segments, key, True, time.perf_counter() - t0)


def _note_other_settings(folder: Path, name: str, key: str) -> None:
    """One line when the cache holds features of this corpus under other keys only (other
    settings, or a key computed differently after an update): they are extracted again."""
    entry = re.compile(rf"{re.escape(name)}-([0-9a-f]{{24}})\.")
    others = {m.group(1) for p in (folder.iterdir() if folder.is_dir() else [])
              if (m := entry.match(p.name)) and m.group(1) != key}
    if others:
        log.info(f"features of {name}: none cached under these settings (key {key}; "
                 f"{len(others)} other key(s) cached); extracting them again")


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
    bound = bind(feat)  # the jobs carry the kind itself: a worker process needs no registry
    jobs = [(groups[i:i + chunk], seg, bound, transcripts) for i in range(0, len(groups), chunk)]
    if workers is None:
        workers = min(os.cpu_count() or 1, len(jobs)) if len(groups) >= 64 else 1
    title = f"features {manifest.name}"
    results = bound.kind.run_jobs(jobs, workers, progress, title, _waves)
    if results is None:
        results = _run_jobs(jobs, workers, progress, title)
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
