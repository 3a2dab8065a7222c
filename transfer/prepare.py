"""Build a corpus manifest and its feature cache, and summarise them.

``python -m transfer.prepare --corpus NAME [--root DIR] [--seconds S] [--mode M] [--overlap S]
[--json]``

NAME is a card in ``datasets/`` or the path of a card file. Segment settings default to the
card's ``[segments]`` (window overlap: 2.5 s, as in a recipe); feature settings to
:class:`transfer.common.config.FeatureSpec`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Any

from transfer import UserError
from transfer.common.config import SEGMENT_MODES, FeatureSpec, SegmentsConfig, SegmentSpec
from transfer.common.console import main_guard, say
from transfer.common.options import Naming
from transfer.data.cards import load_card
from transfer.data.corpora import build_manifest, reason_counts
from transfer.data.features import check_segments, load_features
from transfer.data.kinds import bind


def prepare(corpus: str, root: str | None = None, *, seconds: float | None = None,
            mode: str | None = None, features: FeatureSpec | None = None,
            max_bad_share: float = 0.05, workers: int | None = None,
            progress: bool = True, overlap: float | None = None) -> dict[str, Any]:
    """Manifest + features for one corpus; returns the summary printed by the CLI."""
    t0 = time.perf_counter()
    _check_arguments(seconds, overlap, max_bad_share, workers)
    card = load_card(corpus)
    given = SegmentsConfig(seconds=seconds, mode=mode, overlap_s=overlap)
    seg = given.resolve(card.segments, sample_rate=SegmentSpec.sample_rate,
                        naming=Naming("segments (--seconds, --mode, --overlap)", noun="key"))
    features = features or FeatureSpec()
    check_segments(seg, features, "--seconds")
    manifest = build_manifest(card, root, max_bad_share=max_bad_share,
                              min_seconds=bind(features).min_samples / seg.sample_rate)
    for warning in manifest.warnings:
        say(("warning:", "yellow"), f" {warning}")
    feats = load_features(manifest, seg, features, workers=workers, progress=progress)
    frame = manifest.frame
    return {
        "corpus": card.name,
        "root": str(manifest.root),
        "files": int(len(frame)),
        "speakers": int(frame["speaker"].nunique()),
        "labels": {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()},
        "duration_s": round(float(frame["duration_s"].sum()), 2),
        "segments": int(feats.x.shape[0]),
        "feature_shape": list(feats.x.shape[1:]),
        "segment": dataclasses.asdict(seg),
        "skipped": len(manifest.skipped),
        "skipped_by_reason": reason_counts(manifest.skipped),
        "skipped_files": [{"path": p, "reason": r} for p, r in manifest.skipped],
        "unmatched": len(manifest.unmatched),
        "unmatched_by_reason": reason_counts(manifest.unmatched),
        "unmatched_files": [{"path": p, "reason": r} for p, r in manifest.unmatched],
        "without_label_row": len(manifest.without_row),
        "excluded_by_require": manifest.excluded,
        "dropped_by_label_filter": manifest.dropped,
        "warnings": manifest.warnings,
        "cache_hit": feats.cache_hit,
        "cache_key": feats.key,
        "feature_seconds": round(feats.seconds, 3),
        "realtime_factor": None if feats.cache_hit else
        round(float(frame["duration_s"].sum()) / max(feats.seconds, 1e-9), 1),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _check_arguments(seconds: float | None, overlap: float | None, max_bad_share: float,
                     workers: int | None) -> None:
    """One-line errors for numbers no corpus can be prepared with."""
    if not 0 <= max_bad_share <= 1:
        raise UserError(f"--max-bad-share must be in [0, 1], got {max_bad_share}")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--seconds must be a finite number of seconds > 0, got {seconds}")
    if overlap is not None and not (math.isfinite(overlap) and overlap >= 0):
        raise UserError(f"--overlap must be a finite number of seconds >= 0, got {overlap}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")


@main_guard
def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.prepare`` (see the module docstring); ``argv`` defaults to the
    command line. Prints the summary (or one JSON object); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m transfer.prepare",
                                     description="Build a corpus manifest and feature cache.")
    parser.add_argument("--corpus", required=True, help="card name (datasets/NAME.toml) or path")
    parser.add_argument("--root", help="corpus folder (default: $<NAME>_ROOT)")
    parser.add_argument("--seconds", type=float, help="segment length (default: the card's)")
    parser.add_argument("--mode", choices=SEGMENT_MODES, help="segment mode")
    parser.add_argument("--overlap", type=float, help="overlap of successive windows in "
                        "seconds (window mode; default 2.5)")
    parser.add_argument("--max-bad-share", type=float, default=0.05,
                        help="fail when more than this share of files is unusable")
    parser.add_argument("--workers", type=int, help="feature worker processes (default: cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    summary = prepare(args.corpus, args.root, seconds=args.seconds, mode=args.mode,
                      max_bad_share=args.max_bad_share, workers=args.workers,
                      progress=not args.json, overlap=args.overlap)
    if args.json:
        print(json.dumps(summary))
        return 0
    for path, reason in ((s["path"], s["reason"]) for s in summary["skipped_files"]):
        say(("skipped", "yellow"), f" {path}: {reason}")
    for path, reason in ((s["path"], s["reason"]) for s in summary["unmatched_files"][:20]):
        say(("unmatched", "yellow"), f" {path}: {reason}")
    labels = ", ".join(f"{k} {v}" for k, v in summary["labels"].items())
    hit = "hit" if summary["cache_hit"] else "miss"
    rt = "" if summary["cache_hit"] else f" ({summary['realtime_factor']}x real time)"
    print(f"corpus      {summary['corpus']} at {summary['root']}\n"
          f"files       {summary['files']} ({summary['skipped']} skipped, "
          f"{summary['dropped_by_label_filter']} filtered by label, "
          f"{summary['unmatched']} unmatched, {summary['without_label_row']} without a label "
          f"row)\n"
          + _reasons("skipped", summary["skipped_by_reason"])
          + _reasons("unmatched", summary["unmatched_by_reason"]) +
          f"speakers    {summary['speakers']}\n"
          f"labels      {labels}\n"
          f"duration    {summary['duration_s'] / 60:.1f} min\n"
          f"segments    {summary['segments']} x {summary['feature_shape']}\n"
          f"cache       {hit}, features in {summary['feature_seconds']:.2f} s{rt}\n"
          f"total       {summary['seconds']:.2f} s")
    return 0


def _reasons(title: str, counts: dict[str, int]) -> str:
    """One summary line: how many files per reason (empty when there are none)."""
    if not counts:
        return ""
    return f"{title:<12}" + ", ".join(f"{n} {why}" for why, n in counts.items()) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
