"""Synthetic corpora in the real layouts, for the demo, the tests and benchmarks.

``python -m transfer.data.synth --kind casia|modma --out DIR [--size tiny|small|full] [--seed N]``

The audio is a source-filter voice, not noise: glottal pulses on an F0 contour (declination,
pitch accents, jitter), a vowel-dependent formant filter scaled per speaker (vocal tract
length), syllable-rate amplitude envelopes with fricative onsets, pauses between phrases and
breath noise. Emotion and depression act on prosody only (F0 level and range, speaking rate,
energy, spectral tilt, pauses) with overlapping effect sizes and per-speaker variation, so the
tasks are learnable but not trivial and speakers matter. The two corpora differ in channel
(CASIA-like: clean, 16 kHz; MODMA-like: band-limited to ~5 kHz, mains hum and more noise,
stored at 44.1 kHz) and in speakers, so there is a real domain shift.

Same kind, size and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, lfilter, sosfilt

from transfer.common.console import console, main_guard

SR = 16000  # synthesis rate; MODMA-like audio is resampled to 44.1 kHz afterwards

SIZES: dict[str, dict[str, dict]] = {
    "casia": {
        "tiny": {"speakers": 2, "texts": 3},
        "small": {"speakers": 4, "texts": 12},
        "full": {"speakers": 4, "texts": 50},
    },
    "modma": {
        "tiny": {"subjects": 8, "mdd": 4, "recordings": 3, "seconds": (3.0, 6.0)},
        "small": {"subjects": 16, "mdd": 7, "recordings": 4, "seconds": (4.0, 10.0)},
        "medium": {"subjects": 16, "mdd": 7, "recordings": 12, "seconds": (6.0, 28.0)},
        "full": {"subjects": 52, "mdd": 23, "recordings": 29, "seconds": (6.0, 28.0)},
    },
}

CASIA_SPEAKERS = ["liuchanhg", "wangzhe", "zhaoquanyin", "ZhaoZuoxiang"]
EMOTIONS = ["angry", "fear", "happy", "neutral", "sad", "surprise"]

# (F1, F2, F3) Hz of an average adult vocal tract, scaled per speaker.
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                   [530, 1840, 2480], [570, 840, 2410], [440, 1020, 2240]], dtype=float)


@dataclass(frozen=True)
class Prosody:
    """Prosodic settings of one utterance."""

    f0: float  # Hz, phrase-initial level
    range_st: float  # semitones of declination + accents
    rate: float  # syllables per second
    gain_db: float
    tilt: float  # 0..1, larger = darker (more high-frequency roll-off)
    pause_s: float  # mean pause between phrases
    jitter: float  # relative F0 perturbation


# Emotion effects: (F0 shift st, range x, rate x, energy dB, tilt shift, pause x, jitter x)
EMOTION_EFFECTS = {
    "neutral": (0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0),
    "angry": (3.0, 1.5, 1.12, 6.0, -0.25, 0.8, 1.2),
    "happy": (3.5, 1.6, 1.08, 3.0, -0.12, 0.9, 1.0),
    "fear": (5.0, 0.8, 1.2, -1.0, 0.0, 1.1, 2.5),
    "sad": (-2.0, 0.55, 0.8, -5.0, 0.25, 1.5, 1.3),
    "surprise": (5.0, 2.0, 1.0, 3.0, -0.1, 1.0, 1.0),
}


def _speaker(rng: np.random.Generator, female: bool) -> dict:
    return {
        "f0": rng.uniform(180, 250) if female else rng.uniform(90, 140),
        "tract": rng.uniform(1.08, 1.2) if female else rng.uniform(0.88, 1.0),
        "rate": rng.uniform(4.0, 5.5),
        "range": rng.uniform(3.0, 6.0),
        "gain": rng.uniform(-3, 3),
        "tilt": rng.uniform(0.35, 0.65),
        "pause": rng.uniform(0.25, 0.45),
        "jitter": rng.uniform(0.005, 0.015),
        "sensitivity": rng.uniform(0.6, 1.4),  # how strongly this speaker shows emotion
    }


def _resonator(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / SR)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r])
    return np.array([1.0 - r]), a


def _formant_filter(formants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b, a = np.array([1.0]), np.array([1.0])
    for f, bw in zip(formants, (80.0, 100.0, 140.0), strict=True):
        bi, ai = _resonator(f, bw)
        b, a = np.convolve(b, bi), np.convolve(a, ai)
    return b * 30.0, a


def voice(rng: np.random.Generator, p: Prosody, tract: float, seconds: float | None = None,
          plan: np.random.Generator | None = None) -> np.ndarray:
    """Synthesise one utterance at 16 kHz.

    ``plan``: the generator that draws the syllables and vowels (the "text"); the same plan
    gives the same sentence structure, spoken with any prosody. ``seconds``: target length
    (phrases are added until it is reached); ``None`` = one sentence of 1-3 phrases.
    """
    plan = plan or rng
    n_phrases = plan.integers(1, 4) if seconds is None else 10_000
    pieces: list[np.ndarray] = [np.zeros(int(rng.uniform(0.05, 0.15) * SR), np.float32)]
    total = pieces[0].size
    limit = None if seconds is None else int(seconds * SR)
    for _ in range(n_phrases):
        pieces.append(_breath(rng))
        phrase = _phrase(rng, plan, p, tract)
        pieces.append(phrase)
        pause = np.zeros(int(p.pause_s * rng.lognormal(0, 0.35) * SR), np.float32)
        pieces.append(pause)
        total += pieces[-3].size + phrase.size + pause.size
        if limit is not None and total >= limit:
            break
    out = np.concatenate(pieces)
    if limit is not None:
        out = out[:limit]
    return out * np.float32(10 ** (p.gain_db / 20))


def _breath(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(0.08, 0.2) * SR)
    noise = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n)) * 0.004
    return (noise * np.hanning(n)).astype(np.float32)


def _phrase(rng: np.random.Generator, plan: np.random.Generator, p: Prosody, tract: float
            ) -> np.ndarray:
    n_syl = int(plan.integers(3, 9))
    durs = rng.lognormal(0, 0.25, n_syl) / p.rate
    lengths = np.maximum((durs * SR).astype(int), 400)
    n = int(lengths.sum())
    t = np.arange(n) / SR
    # F0: declination over the phrase plus accents on some syllables, in semitones
    st = p.range_st * (0.5 - t / max(t[-1], 1e-3) * 0.6)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    accents = plan.random(n_syl) < 0.35
    for i in np.flatnonzero(accents):
        mid = (bounds[i] + bounds[i + 1]) / 2 / SR
        st += p.range_st * 0.6 * np.exp(-0.5 * ((t - mid) / 0.06) ** 2)
    f0 = p.f0 * 2 ** (st / 12) * (1 + p.jitter * rng.standard_normal(n).cumsum() / np.sqrt(n))
    f0 *= 1 + p.jitter * rng.standard_normal(n)
    phase = np.cumsum(f0 / SR) % 1.0
    # Rosenberg-like glottal flow, differentiated (lip radiation), plus aspiration noise
    open_q = 0.6
    flow = np.where(phase < open_q, 0.5 * (1 - np.cos(np.pi * phase / open_q)), 0.0)
    source = np.diff(flow, prepend=0.0) + 0.02 * rng.standard_normal(n)
    source = lfilter([1.0], [1.0, -p.tilt], source)  # spectral tilt
    out = np.empty(n)
    vowel_ids = plan.integers(0, len(VOWELS), n_syl)
    onsets = plan.random(n_syl) < 0.5
    for i in range(n_syl):
        a, b = bounds[i], bounds[i + 1]
        formants = VOWELS[vowel_ids[i]] * tract * rng.uniform(0.95, 1.05, 3)
        bf, af = _formant_filter(formants)
        syl = lfilter(bf, af, source[a:b])
        m = b - a
        env = np.sin(np.pi * np.linspace(0, 1, m)) ** 0.6
        if accents[i]:
            env *= 1.4
        if onsets[i]:  # fricative onset: high-passed noise burst
            k = min(int(rng.uniform(0.03, 0.08) * SR), m // 2)
            fric = np.diff(rng.standard_normal(k + 1)) * 0.05
            syl[:k] = syl[:k] * np.linspace(0, 1, k) + fric * np.hanning(k)
        out[a:b] = syl * env
    return out.astype(np.float32)


def _write(path: Path, audio: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -0.99, 0.99), rate, subtype="PCM_16", format="WAV")


def _channel_casia(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    sos = butter(2, 70, "highpass", fs=SR, output="sos")
    y = sosfilt(sos, x)
    return (y + 10 ** (-40 / 20) * 0.05 * rng.standard_normal(y.size)).astype(np.float32)


def _channel_modma(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    sos = butter(4, 5000, "lowpass", fs=SR, output="sos")
    y = sosfilt(sos, x)
    t = np.arange(y.size) / SR
    hum = 0.002 * np.sin(2 * np.pi * 50 * t) + 0.001 * np.sin(2 * np.pi * 150 * t)
    y = 0.7 * y + hum + 0.0015 * rng.standard_normal(y.size)
    return soxr.resample(y.astype(np.float32), SR, 44100).astype(np.float32)


def make_casia(out: str | Path, size: str = "small", seed: int = 0) -> Path:
    """A CASIA-like emotion corpus: ``<speaker>/<emotion>/<id>.wav``, 16 kHz."""
    cfg = SIZES["casia"][size]
    out = Path(out)
    for s_idx, name in enumerate(CASIA_SPEAKERS[:cfg["speakers"]]):
        srng = np.random.default_rng([seed, 1, s_idx])
        spk = _speaker(srng, female=name in ("liuchanhg", "zhaoquanyin"))
        for e_idx, emotion in enumerate(EMOTIONS):
            eff = EMOTION_EFFECTS[emotion]
            k = spk["sensitivity"]
            for text in range(cfg["texts"]):
                rng = np.random.default_rng([seed, 2, s_idx, e_idx, text])
                plan = np.random.default_rng([seed, 3, text])  # same text for every speaker
                p = Prosody(
                    f0=spk["f0"] * 2 ** ((k * eff[0] + rng.normal(0, 1.2)) / 12),
                    range_st=spk["range"] * eff[1] ** k * rng.lognormal(0, 0.2),
                    rate=spk["rate"] * eff[2] ** k * rng.lognormal(0, 0.08),
                    gain_db=spk["gain"] + k * eff[3] + rng.normal(0, 2.0),
                    tilt=float(np.clip(spk["tilt"] + k * eff[4] + rng.normal(0, 0.05), 0.05, 0.95)),
                    pause_s=spk["pause"] * eff[5],
                    jitter=spk["jitter"] * eff[6],
                )
                audio = voice(rng, p, spk["tract"], plan=plan) * 1.5
                _write(out / name / emotion / f"{201 + text}.wav", _channel_casia(rng, audio), SR)
    return out


def make_modma(out: str | Path, size: str = "small", seed: int = 0) -> Path:
    """A MODMA-like depression corpus: ``<8-digit id>/<nn>.wav`` at 44.1 kHz plus
    ``subjects_information_audio_lanzhou_2015.xlsx`` (numeric ``subject id``, ``type``)."""
    cfg = SIZES["modma"][size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    lo, hi = cfg["seconds"]
    n_mdd = cfg["mdd"]
    for i in range(cfg["subjects"]):
        mdd = i < n_mdd
        sid = f"0201{i + 1:04d}" if mdd else f"0203{i - n_mdd + 1:04d}"
        srng = np.random.default_rng([seed, 11, i])
        female = bool(srng.random() < 0.55)
        spk = _speaker(srng, female)
        z = srng.normal(1.0 if mdd else 0.0, 0.6)  # latent severity; the groups overlap
        phq = int(np.clip(round(5 + 8 * z + srng.normal(0, 3)), 0, 27))
        rows.append({"subject id": int(sid), "type": "MDD" if mdd else "HC",
                     "age": int(srng.integers(18, 56)), "gender": "F" if female else "M",
                     "PHQ-9": phq, "GAD-7": int(np.clip(phq * 0.7 + srng.normal(0, 3), 0, 21))})
        for r in range(cfg["recordings"]):
            rng = np.random.default_rng([seed, 12, i, r])
            reading = r % 3 == 1  # reading tasks: faster, fewer pauses than interview answers
            p = Prosody(
                f0=spk["f0"] * 2 ** ((-0.8 * z + rng.normal(0, 1.0)) / 12),
                range_st=spk["range"] * np.exp(-0.35 * z) * rng.lognormal(0, 0.2),
                rate=spk["rate"] * np.exp(-0.12 * z) * (1.1 if reading else 1.0)
                * rng.lognormal(0, 0.08),
                gain_db=spk["gain"] - 2.5 * z + rng.normal(0, 2.0),
                tilt=float(np.clip(spk["tilt"] + 0.1 * z + rng.normal(0, 0.05), 0.05, 0.95)),
                pause_s=spk["pause"] * np.exp(0.4 * z) * (0.7 if reading else 1.0),
                jitter=spk["jitter"],
            )
            seconds = float(rng.uniform(lo, hi))
            audio = voice(rng, p, spk["tract"], seconds=seconds) * 1.5
            _write(out / sid / f"{r + 1:02d}.wav", _channel_modma(rng, audio), 44100)
    _write_xlsx(out / "subjects_information_audio_lanzhou_2015.xlsx", rows)
    return out


def _write_xlsx(path: Path, rows: list[dict]) -> None:
    """An .xlsx with fixed timestamps, so the same rows give the same bytes."""
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(rows).to_excel(buf, index=False, engine="openpyxl")
    fixed = (2015, 1, 1, 0, 0, 0)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "docProps/core.xml":
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2015-01-01T00:00:00Z", data)
            info = zipfile.ZipInfo(item.filename, date_time=fixed)
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())


MAKERS = {"casia": make_casia, "modma": make_modma}


def make(kind: str, out: str | Path, size: str = "small", seed: int = 0) -> Path:
    """Write a synthetic corpus of ``kind`` (``casia`` | ``modma``) into ``out``."""
    from transfer import UserError

    if kind not in MAKERS:
        raise UserError(f"--kind must be one of {sorted(MAKERS)}, not {kind!r}")
    if size not in SIZES[kind]:
        raise UserError(f"--size must be one of {sorted(SIZES[kind])}, not {size!r}")
    return MAKERS[kind](out, size, seed)


def cached(kind: str, size: str = "small", seed: int = 0) -> Path:
    """A synthetic corpus in the cache, generated on first use (atomically)."""
    import os
    import shutil
    import tempfile

    from transfer.common.cache import cache_dir

    target = cache_dir() / "synth" / f"{kind}-{size}-seed{seed}-v1"
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        console.print(f"generating synthetic {kind} corpus ({size}, seed {seed}) into {target}")
        make(kind, tmp, size, seed)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.data.synth",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, choices=sorted(MAKERS))
    parser.add_argument("--out", required=True, help="folder to write the corpus into")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium", "full"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make(args.kind, args.out, args.size, args.seed)
    n = sum(1 for _ in path.rglob("*.wav"))
    console.print(f"wrote {n} wav files ({args.kind}, {args.size}, seed {args.seed}) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
