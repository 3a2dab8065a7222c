"""Apply an exported model to new recordings.

``python -m transfer.predict MODEL AUDIO... [--out preds.csv] [--group-by folder|none]
[--allow-upsampling]``

AUDIO: wav/flac files and folders (searched recursively). Each file is resampled, segmented
and featurised with the model's own settings; the CSV has one row per file (class
probabilities = mean over its segments, predicted label, number of segments) and, with
``--group-by folder`` (the default; a folder = a subject in MODMA's layout), one row per
folder from the mean probability of all its segments.

Files that cannot be used are skipped with their reason (unreadable, truncated, NaN/inf
samples, too short) and the exit status is 1. Audio recorded below the model's sample rate is
refused unless ``--allow-upsampling``: upsampling cannot restore the missing band, and the
model never saw such spectra (8 kHz audio can flip a subject's prediction).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transfer import UserError
from transfer.common.cache import atomic_path
from transfer.common.console import console, main_guard, say
from transfer.data.audio import AudioInfo, SegmentSpec, cut, load_audio, probe
from transfer.data.kinds import bind
from transfer.train.package import build_model, load_package, package_spec

AUDIO_SUFFIXES = {".wav", ".flac"}


def collect(paths: list[str]) -> list[Path]:
    """The .wav/.flac files named by ``paths``, folders searched recursively (sorted within a
    folder), in the order given. A missing path, a file of another kind or a folder without
    audio is a :class:`UserError`."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise UserError(f"no .wav or .flac files under {p}")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in AUDIO_SUFFIXES:
                raise UserError(f"{p} is not a .wav or .flac file")
            files.append(p)
        else:
            raise UserError(f"no such file or folder: {p}")
    return files


def check_output(out: Path) -> None:
    """``--out`` names a file that can be written: its folder exists and it is no folder."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the path of a CSV file to write")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")


def predict_files(package: dict, files: list[Path], group_by: str = "folder", *,
                  allow_upsampling: bool = False) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows per file (and per folder); plus (file, reason) for files that could not be used.

    Audio below the model's sample rate is one of those unless ``allow_upsampling``.
    """
    seg = SegmentSpec(**package["segments"])
    model = build_model(package)
    labels = package["labels"]
    rows, problems, per_file = [], [], {}
    resampled: set[int] = set()
    mixed: list[Path] = []
    for path in files:
        info = probe(path)
        prob = info if isinstance(info, str) else _file_probs(package, model, path, info,
                                                              allow_upsampling)
        if isinstance(prob, str):
            problems.append((str(path), prob))
            continue
        if info.sample_rate != seg.sample_rate:
            resampled.add(info.sample_rate)
        if info.channels > 1:
            mixed.append(path)
        per_file[path] = prob
        rows.append(_row("file", str(path), prob, labels))
    for rate in sorted(resampled):
        how = "upsampled (--allow-upsampling)" if rate < seg.sample_rate else "resampled"
        console.print(f"note: audio at {rate} Hz was {how} to the model's {seg.sample_rate} Hz")
    if mixed:
        console.print(f"note: {len(mixed)} file(s) have more than one channel and were mixed "
                      f"down to mono, e.g. {mixed[0]}")
    if group_by == "folder":
        folders: dict[Path, list[np.ndarray]] = {}
        for path, prob in per_file.items():
            folders.setdefault(path.parent, []).append(prob)
        for folder, probs in folders.items():
            rows.append(_row("subject", str(folder), np.concatenate(probs), labels,
                             files=len(probs)))
    return pd.DataFrame(rows), problems


def _file_probs(package: dict, model: torch.nn.Module, path: Path, info: AudioInfo,
                allow_upsampling: bool) -> np.ndarray | str:
    """(segments, classes) probabilities of one usable file, or why it cannot be used."""
    seg = SegmentSpec(**package["segments"])
    feat = bind(package_spec(package))
    rate = info.sample_rate
    if rate < seg.sample_rate and not allow_upsampling:
        return (f"sample rate {rate} Hz is below the model's {seg.sample_rate} Hz: upsampling "
                "cannot restore the missing band and changes predictions; pass "
                "--allow-upsampling to use it anyway")
    try:
        audio = load_audio(str(path), seg.sample_rate)
    except UserError as err:
        return str(err)
    if audio.size < feat.min_samples:
        return (f"too short: {audio.size} samples at {seg.sample_rate} Hz, less than one "
                f"analysis frame ({feat.min_samples} samples)")
    pieces, _ = cut(audio, seg)
    x = torch.from_numpy(feat.extract(np.stack(pieces), seg.sample_rate))
    with torch.no_grad():
        x = (x - package["norm_mean"]) / package["norm_std"]
        prob = torch.softmax(model(x), -1).numpy()  # (segments, classes)
    if not np.isfinite(prob).all():  # never a label from NaN probabilities
        return "non-finite model output: the features or the model give NaN/inf probabilities"
    return prob


def _row(kind: str, name: str, prob: np.ndarray, labels: list[str], files: int = 1) -> dict:
    mean = prob.mean(0)
    row = {"kind": kind, "name": name, "files": files, "segments": int(prob.shape[0])}
    row.update({f"prob_{lab}": round(float(p), 6) for lab, p in zip(labels, mean)})
    row["predicted"] = labels[int(mean.argmax())]
    return row


@main_guard
def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.predict`` (see the module docstring); ``argv`` defaults to the
    command line. Returns 0, or 1 when some files were skipped."""
    parser = argparse.ArgumentParser(prog="python -m transfer.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported model package (.pt)")
    parser.add_argument("audio", nargs="+", help="wav/flac files or folders")
    parser.add_argument("--out", help="CSV to write (default: print)")
    parser.add_argument("--group-by", choices=["folder", "none"], default="folder")
    parser.add_argument("--allow-upsampling", action="store_true",
                        help="use audio recorded below the model's sample rate (upsampled)")
    args = parser.parse_args(argv)
    if args.out:
        check_output(Path(args.out))
    package = load_package(args.model)
    files = collect(args.audio)
    table, problems = predict_files(package, files, args.group_by,
                                    allow_upsampling=args.allow_upsampling)
    for path, reason in problems:
        say(("skipped", "yellow"), f" {path}: {reason}")
    if table.empty:
        raise UserError(f"none of the {len(files)} file(s) could be used")
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        console.print(f"wrote {len(table)} rows to {args.out}")
    else:
        print(table.to_csv(index=False), end="")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
