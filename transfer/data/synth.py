"""Synthetic corpora with a designed transfer effect, in the real layouts.

``python -m transfer.data.synth --kind casia|modma --out DIR [--size tiny|small|demo|...] [--seed N]``

The audio is a source-filter voice, not noise: glottal pulses on an F0 contour (declination,
pitch accents, jitter), a vowel-dependent formant filter scaled per speaker (vocal tract
length), syllable-rate amplitude envelopes with fricative onsets, pauses between phrases and
breath noise. What the two corpora share and where they differ is designed, like DomainBed's
ColoredMNIST, so that the answer of a transfer experiment is known by construction. The
factors and their sizes are the fields of :class:`Factors`; every generated corpus has a
``README.md`` that states them.

1. **Prosodic factor (low arousal).** One scalar ``a`` per utterance moves F0 level and
   range, speaking rate, energy, spectral tilt and pause length together (``a = 1``: the
   sizes in :class:`Factors`). In the CASIA-like source every emotion has its own arousal
   (sad +2 ... angry -1.5), so the emotion labels teach this factor clearly. In the
   MODMA-like target, depressed subjects sit ``depression_shift`` higher on the same factor
   than healthy ones, but the subjects of each group spread around their mean and every
   recording adds its own noise, so the target alone shows it only weakly and noisily.
   **Designed subgroup difference:** depression shows more in the women's voices than in the
   men's: depressed women sit ``gender_gap / 2`` above ``depression_shift``, depressed men as
   far below it (healthy subjects are not affected), so a model that reads the prosodic factor
   finds depressed women more easily than depressed men. Age (uniform 18-55, in the subject
   table) has no designed effect.
2. **Identity factor.** Every speaker has a voice (F0 level, vocal tract length, formant
   idiosyncrasies, speaking-rate, range, level, tilt and pause habits); ``identity`` scales
   how far speakers differ. Identity is strong, consistent within a speaker and unrelated to
   the labels: a model that learns the target from a few subjects can memorise it.
3. **Channel shift.** The source is clean wideband 16-kHz speech; the target is band-limited,
   noisy, has mains hum, a different level and a level that varies per recording, and is
   stored at 44.1 kHz. A model's source-trained features therefore see two domains.

A third corpus, EmoDB-like (``--kind emodb``), is the **same-label-space pair** of the
CASIA-like source: the same emotions (anger, fear, happiness, neutral, sadness: CASIA's
angry, fear, happy, neutral, sad) made by the same prosodic model, recorded at another site.
What differs is designed (:class:`SiteShift`): a channel shift of the whole site (band limit,
level, noise) and per-speaker offsets (each speaker's own level and spectral tilt, as a
microphone and its distance give). A cross-corpus emotion recognizer trained on the source
loses accuracy on it by construction; test-time adaptation, unsupervised alignment and
speaker normalisation each undo part of that loss.

Same kind, size, seed and factors give the same bytes.

Why one file (~770 lines): the three corpora share one voice model (source-filter voice,
prosody, channels) and one :class:`Factors`; their designed effects are stated and tuned together,
and each corpus's README is generated from the same fields.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, lfilter, sosfilt
from scipy.stats import qmc

from transfer.common.console import console, main_guard

log = logging.getLogger(__name__)

SR = 16000  # synthesis rate; MODMA-like audio is resampled to 44.1 kHz afterwards
CACHE_VERSION = 5  # bump whenever the generator changes what it writes

SIZES: dict[str, dict[str, dict]] = {
    "casia": {
        "tiny": {"speakers": 2, "texts": 3, "seconds": None},
        "loso": {"speakers": 4, "texts": 3, "seconds": None},  # CASIA's 4 speakers, tiny: LOSO tests
        "small": {"speakers": 4, "texts": 12, "seconds": None},
        "demo": {"speakers": 8, "texts": 12, "seconds": (3.0, 4.0)},
        "full": {"speakers": 4, "texts": 50, "seconds": None},
    },
    "modma": {
        "tiny": {"subjects": 8, "mdd": 4, "recordings": 3, "seconds": (3.0, 6.0)},
        "small": {"subjects": 16, "mdd": 7, "recordings": 4, "seconds": (4.0, 10.0)},
        "demo": {"subjects": 32, "mdd": 14, "recordings": 3, "seconds": (4.0, 8.0)},
        "medium": {"subjects": 16, "mdd": 7, "recordings": 12, "seconds": (6.0, 28.0)},
        "full": {"subjects": 52, "mdd": 23, "recordings": 29, "seconds": (6.0, 28.0)},
    },
    "emodb": {  # speakers x 5 emotions x texts
        "tiny": {"speakers": 4, "texts": 2, "seconds": None},
        "small": {"speakers": 6, "texts": 4, "seconds": None},
        "demo": {"speakers": 10, "texts": 6, "seconds": (3.0, 4.0)},
        "full": {"speakers": 10, "texts": 10, "seconds": None},
    },
}

CASIA_SPEAKERS = ["liuchanhg", "wangzhe", "zhaoquanyin", "ZhaoZuoxiang"]
EMOTIONS = ["angry", "fear", "happy", "neutral", "sad", "surprise"]

# (F1, F2, F3) Hz of an average adult vocal tract, scaled per speaker.
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                   [530, 1840, 2480], [570, 840, 2410], [440, 1020, 2240]], dtype=float)


@dataclass(frozen=True)
class Factors:
    """The designed factors of the synthetic pair and their sizes (see the module docstring).

    Prosodic factor, per unit of low arousal ``a``:
        f0_st: F0 shift in semitones.
        range_log, rate_log, pause_log: log-factors of F0 range, speaking rate, pause length.
        energy_db: level change in dB.
        tilt: spectral tilt change (0..1 scale; larger = darker voice).
    Source (emotion corpus):
        emotion_arousal: ``a`` of each emotion (sad highest, angry lowest).
        source_arousal_sd: per-utterance noise on ``a``.
    Target (depression corpus):
        depression_shift: mean ``a`` of depressed minus healthy subjects.
        gender_gap: the designed subgroup difference: depressed women's shift minus depressed
            men's (women ``depression_shift + gender_gap / 2``, men ``- gender_gap / 2``).
        subject_sd: spread of ``a`` between the subjects of one group.
        recording_sd: spread of ``a`` between the recordings of one subject.
    Identity factor:
        identity: scales how far speakers' timbre differs (F0 level, vocal tract length,
            formant idiosyncrasies, jitter); 1 = the spread of adult speakers.
        habits: scales how far speakers' prosodic habits differ (rate, F0 range, level,
            tilt, pauses: the cues of the prosodic factor); 1 = +-16 % rate, +-3 dB level.
        level_sd_db: recording level variation in both corpora (microphone distance), in dB.
    Channel shift (target relative to the clean 16-kHz source):
        target_band_hz: low-pass edge of the target channel.
        target_snr_db: noise floor below the speech of an average speaker at ``a`` = 0, in dB.
        target_hum_db: 50-Hz mains hum (+ its 3rd harmonic at half of it), in dB below the
            speech of an average speaker.
        target_level_db: constant level change of the target.
    """

    f0_st: float = -1.0
    range_log: float = -0.45
    rate_log: float = -0.25
    pause_log: float = 0.6
    energy_db: float = -3.0
    tilt: float = 0.0
    emotion_arousal: tuple[tuple[str, float], ...] = (
        ("angry", -1.5), ("fear", -0.4), ("happy", -1.0), ("neutral", 0.0), ("sad", 2.0),
        ("surprise", -0.8))
    source_arousal_sd: float = 0.2
    emotion_extras: float = 1.0
    depression_shift: float = 1.5
    # large enough that the subgroup report finds it (tests/test_report.py), small enough that
    # depressed men still differ from healthy subjects (+1.0, women +2.0)
    gender_gap: float = 1.0
    subject_sd: float = 0.3
    recording_sd: float = 0.8
    identity: float = 1.0
    habits: float = 0.5
    level_sd_db: float = 3.0
    target_band_hz: float = 4000.0
    target_snr_db: float = 40.0
    target_hum_db: float = 20.0
    target_level_db: float = -6.0


# Emotion-specific effects next to arousal, so that the six emotions are distinguishable:
# (F0 shift st, range x, energy dB, tilt shift, jitter x)
EMOTION_EXTRAS = {
    "neutral": (0.0, 1.0, 0.0, 0.0, 1.0),
    "angry": (0.0, 1.0, 2.0, -0.1, 1.2),
    "happy": (2.0, 1.2, 0.0, 0.0, 1.0),
    "fear": (4.0, 0.7, -2.0, 0.05, 2.5),
    "sad": (0.0, 1.0, 0.0, 0.0, 1.3),
    "surprise": (3.5, 1.5, 0.0, 0.0, 1.0),
}


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


VOICE_PARAMS = 12  # uniforms that define a speaker: gender, 6 of timbre, 5 habits


def _speaker(u: np.ndarray, female: bool, f: Factors) -> dict:
    """A speaker's voice from ``VOICE_PARAMS`` uniforms in [0, 1) (``u[0]``, the gender, is
    used by the caller): timbre spread by ``identity``, prosodic habits by ``habits``."""
    ident, habit = f.identity, f.habits

    def spread(i: int, centre: float, half_width: float, scale: float) -> float:
        return centre + scale * half_width * (2 * u[i] - 1)

    return {
        "f0": spread(1, 215, 35, ident) if female else spread(1, 115, 25, ident),
        "tract": spread(2, 1.14, 0.06, ident) if female else spread(2, 0.94, 0.06, ident),
        "formants": np.exp(ident * 0.1 * (2 * u[3:6] - 1)),  # idiosyncratic F1-F3 offsets
        "jitter": spread(6, 0.01, 0.005, ident),
        "rate": spread(7, 4.75, 0.75, habit),
        "range": spread(8, 4.5, 1.5, habit),
        "gain": spread(9, 0.0, 3.0, habit),
        "tilt": spread(10, 0.5, 0.15, habit),
        "pause": spread(11, 0.35, 0.1, habit),
    }


def _voices(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` speakers' voice uniforms, (n, VOICE_PARAMS), by Latin hypercube sampling: each
    parameter's n values fall one into each of n equal strata of [0, 1)."""
    return qmc.LatinHypercube(d=VOICE_PARAMS, seed=rng).random(n)


def _prosody(spk: dict, a: float, f: Factors, rng: np.random.Generator,
             extras: tuple = (0.0, 1.0, 0.0, 0.0, 1.0)) -> Prosody:
    """A speaker's prosody at low arousal ``a`` (plus emotion extras and utterance noise)."""
    e = f.emotion_extras
    f0_x, range_x, db_x, tilt_x, jitter_x = extras
    f0_x, range_x, db_x, tilt_x, jitter_x = (f0_x * e, range_x ** e, db_x * e, tilt_x * e,
                                             jitter_x ** e)
    return Prosody(
        f0=spk["f0"] * 2 ** ((f.f0_st * a + f0_x + rng.normal(0, 0.7)) / 12),
        range_st=spk["range"] * np.exp(f.range_log * a) * range_x * rng.lognormal(0, 0.15),
        rate=spk["rate"] * np.exp(f.rate_log * a) * rng.lognormal(0, 0.06),
        gain_db=spk["gain"] + f.energy_db * a + db_x + rng.normal(0, f.level_sd_db),
        tilt=float(np.clip(spk["tilt"] + f.tilt * a + tilt_x + rng.normal(0, 0.03), 0.05, 0.95)),
        pause_s=spk["pause"] * np.exp(f.pause_log * a),
        jitter=spk["jitter"] * jitter_x,
    )


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


def voice(rng: np.random.Generator, p: Prosody, tract: float | np.ndarray,
          seconds: float | None = None, plan: np.random.Generator | None = None) -> np.ndarray:
    """Synthesise one utterance at 16 kHz.

    ``tract``: formant scale (one factor, or one per formant). ``plan``: the generator that
    draws the syllables and vowels (the "text"); the same plan gives the same sentence
    structure, spoken with any prosody. ``seconds``: target length (phrases are added until it
    is reached); ``None`` = one sentence of 1-3 phrases.
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


def _phrase(rng: np.random.Generator, plan: np.random.Generator, p: Prosody,
            tract: float | np.ndarray) -> np.ndarray:
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


SPEECH_RMS = 0.03  # rms of the synthesised voice of an average speaker at a = 0
SOURCE_SNR_DB = 50.0


def _channel_source(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Clean studio channel: 70-Hz high-pass, a faint white noise floor, 16 kHz."""
    sos = butter(2, 70, "highpass", fs=SR, output="sos")
    y = sosfilt(sos, x)
    noise = SPEECH_RMS * 10 ** (-SOURCE_SNR_DB / 20) * rng.standard_normal(y.size)
    return (y + noise).astype(np.float32)



def _channel_target(rng: np.random.Generator, x: np.ndarray, f: Factors) -> np.ndarray:
    """Clinical-room channel: band limit, level (constant + per recording), noise, hum; 44.1 kHz."""
    sos = butter(4, f.target_band_hz, "lowpass", fs=SR, output="sos")
    level = 10 ** (f.target_level_db / 20)
    y = level * sosfilt(sos, x)
    t = np.arange(y.size) / SR
    phase = rng.uniform(0, 2 * np.pi)
    hum_amp = level * SPEECH_RMS * np.sqrt(2) * 10 ** (-f.target_hum_db / 20)
    hum = hum_amp * (np.sin(2 * np.pi * 50 * t + phase)
                          + 0.5 * np.sin(2 * np.pi * 150 * t + 3 * phase))
    noise = level * SPEECH_RMS * 10 ** (-f.target_snr_db / 20) * rng.standard_normal(y.size)
    y = y + hum + lfilter([1.0], [1.0, -0.5], noise)  # slightly pink noise floor
    return soxr.resample(y.astype(np.float32), SR, 44100).astype(np.float32)


Size = str | Mapping[str, Any]


def _size(kind: str, size: Size) -> dict[str, Any]:
    """A size by name (``SIZES[kind]``) or given directly as a mapping with the same keys."""
    if isinstance(size, str):
        return SIZES[kind][size]
    missing = set(SIZES[kind]["tiny"]) - set(size)
    if missing:
        raise ValueError(f"a {kind} size needs the keys {sorted(SIZES[kind]['tiny'])}")
    return dict(size)


def make_casia(out: str | Path, size: Size = "small", seed: int = 0,
               factors: Factors | None = None) -> Path:
    """A CASIA-like emotion corpus: ``<speaker>/<emotion>/<id>.wav``, 16 kHz, and a README.md."""
    f = factors or Factors()
    cfg = _size("casia", size)
    out = Path(out)
    arousal = dict(f.emotion_arousal)
    latents = []
    for s_idx in range(cfg["speakers"]):
        # CASIA's four speakers (two female), then more speakers for larger synthetic sources
        name = CASIA_SPEAKERS[s_idx] if s_idx < 4 else f"speaker{s_idx + 1:02d}"
        female = name in ("liuchanhg", "zhaoquanyin") or (s_idx >= 4 and s_idx % 2 == 0)
        srng = np.random.default_rng([seed, 1, s_idx])
        spk = _speaker(srng.random(VOICE_PARAMS), female, f)
        tract = spk["tract"] * spk["formants"]
        for e_idx, emotion in enumerate(EMOTIONS):
            for text in range(cfg["texts"]):
                rng = np.random.default_rng([seed, 2, s_idx, e_idx, text])
                plan = np.random.default_rng([seed, 3, text])  # same text for every speaker
                a = arousal[emotion] + rng.normal(0, f.source_arousal_sd)
                p = _prosody(spk, a, f, rng, EMOTION_EXTRAS[emotion])
                seconds = None if cfg["seconds"] is None else float(plan.uniform(*cfg["seconds"]))
                audio = voice(rng, p, tract, seconds, plan=plan) * 1.5
                rel = f"{name}/{emotion}/{201 + text}.wav"
                _write(out / rel, _channel_source(rng, audio), SR)
                latents.append({"file": rel, "speaker": name, "label": emotion, "arousal": a})
    _write_latents(out, latents)
    _write_readme(out, "casia", size, seed, f)
    return out


def make_modma(out: str | Path, size: Size = "small", seed: int = 0,
               factors: Factors | None = None) -> Path:
    """A MODMA-like depression corpus: ``<8-digit id>/<nn>.wav`` at 44.1 kHz,
    ``subjects_information_audio_lanzhou_2015.xlsx`` (numeric ``subject id``, ``type``) and a
    README.md."""
    f = factors or Factors()
    cfg = _size("modma", size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, latents = [], []
    lo, hi = cfg["seconds"]
    n_mdd = cfg["mdd"]
    # Voices per group by Latin hypercube sampling: every voice parameter (gender included)
    # spreads evenly over its range in both groups, so no voice is confounded with the label
    # by chance (independent draws of 12 + 12 voices easily give one group more women).
    voices = [_voices(n, np.random.default_rng([seed, 13, g]))
              for g, n in enumerate((n_mdd, cfg["subjects"] - n_mdd))]
    for i in range(cfg["subjects"]):
        mdd = i < n_mdd
        sid = f"0201{i + 1:04d}" if mdd else f"0203{i - n_mdd + 1:04d}"
        srng = np.random.default_rng([seed, 11, i])
        voice_u = voices[0][i] if mdd else voices[1][i - n_mdd]
        female = bool(voice_u[0] < 0.55)
        spk = _speaker(voice_u, female, f)
        tract = spk["tract"] * spk["formants"]
        shift = f.depression_shift + (f.gender_gap if female else -f.gender_gap) / 2
        a_subject = (shift if mdd else 0.0) + srng.normal(0, f.subject_sd)
        z = a_subject / max(f.depression_shift, 1e-6)  # severity in units of the group shift
        phq = int(np.clip(round(5 + 8 * z + srng.normal(0, 3)), 0, 27))
        rows.append({"subject id": int(sid), "type": "MDD" if mdd else "HC",
                     "age": int(srng.integers(18, 56)), "gender": "F" if female else "M",
                     "PHQ-9": phq, "GAD-7": int(np.clip(phq * 0.7 + srng.normal(0, 3), 0, 21))})
        for r in range(cfg["recordings"]):
            rng = np.random.default_rng([seed, 12, i, r])
            a = a_subject + rng.normal(0, f.recording_sd)
            p = _prosody(spk, a, f, rng)
            seconds = float(rng.uniform(lo, hi))
            audio = voice(rng, p, tract, seconds=seconds) * 1.5
            rel = f"{sid}/{r + 1:02d}.wav"
            _write(out / rel, _channel_target(rng, audio, f), 44100)
            latents.append({"file": rel, "speaker": sid, "label": "MDD" if mdd else "HC",
                            "arousal": a})
    _write_xlsx(out / "subjects_information_audio_lanzhou_2015.xlsx", rows)
    _write_latents(out, latents)
    _write_readme(out, "modma", size, seed, f)
    return out


def describe(kind: str, size: Size, seed: int, factors: Factors | None = None) -> str:
    """The README.md of a generated corpus: layout, size and every designed factor."""
    if kind == "emodb":
        return describe_emodb(size, seed, factors)
    f = factors or Factors()
    cfg = _size(kind, size)
    name = size if isinstance(size, str) else "custom"
    if kind == "casia":
        what = (f"Synthetic CASIA-like emotion corpus (`transfer.data.synth`, size `{name}`, seed "
                f"{seed}): {cfg['speakers']} speakers x {len(EMOTIONS)} emotions x "
                f"{cfg['texts']} texts, `<speaker>/<emotion>/<id>.wav`, 16 kHz, clean channel "
                f"(70-Hz high-pass, white noise floor {SOURCE_SNR_DB:g} dB below speech).")
    else:
        lo, hi = cfg["seconds"]
        what = (f"Synthetic MODMA-like depression corpus (`transfer.data.synth`, size `{name}`, seed "
                f"{seed}): {cfg['subjects']} subjects ({cfg['mdd']} MDD, "
                f"{cfg['subjects'] - cfg['mdd']} HC) x {cfg['recordings']} recordings of "
                f"{lo:g}-{hi:g} s, `<8-digit id>/<nn>.wav` at 44.1 kHz, labels in "
                "`subjects_information_audio_lanzhou_2015.xlsx`.")
    arousal = ", ".join(f"{e} {a:+g}" for e, a in f.emotion_arousal)
    lines = [
        f"# Synthetic {kind} corpus", "", what, "",
        "Generated; not speech of real people. The factors below are designed so that the "
        "answer of a transfer experiment is known (see `transfer/data/synth.py`).", "",
        "## Factors and their sizes", "",
        "1. **Prosodic factor (low arousal `a`).** Per unit of `a`: F0 "
        f"{f.f0_st:+g} semitones, F0 range x{np.exp(f.range_log):.2f}, speaking rate "
        f"x{np.exp(f.rate_log):.2f}, energy {f.energy_db:+g} dB, spectral tilt {f.tilt:+g}, "
        f"pauses x{np.exp(f.pause_log):.2f}.",
        f"   - Source (emotion labels teach it): `a` per emotion {arousal}; per-utterance "
        f"noise sd {f.source_arousal_sd:g}. Emotions also differ in F0, range, energy and "
        "jitter beyond arousal.",
        f"   - Target (weak and noisy): depressed subjects +{f.depression_shift:g} above "
        f"healthy ones; between-subject sd {f.subject_sd:g} within a group; per-recording sd "
        f"{f.recording_sd:g}.",
        f"   - Designed subgroup difference (target): depression shows more in women's voices: "
        f"depressed women +{f.depression_shift + f.gender_gap / 2:g}, depressed men "
        f"+{f.depression_shift - f.gender_gap / 2:g} (gap {f.gender_gap:g}); healthy subjects "
        "alike. Subject table: `gender` (F/M, spread evenly over both groups), `age` (uniform "
        "18-55, no designed effect: a subgroup report should find no age gap).",
        f"2. **Identity factor** (scale {f.identity:g}): every speaker has an F0 level, vocal "
        "tract length, idiosyncratic formant offsets (sd 6 %), and habits of rate, F0 range, "
        "level (+-3 dB), tilt and pauses; consistent within a speaker, unrelated to the labels.",
        "3. **Channel shift** (target vs source): source clean wideband 16 kHz; target "
        f"low-passed at {f.target_band_hz:g} Hz, noise floor {f.target_snr_db:g} dB below "
        f"speech, 50/150-Hz hum {f.target_hum_db:g} dB below speech, level {f.target_level_db:+g} dB "
        "stored at 44.1 kHz.",
        "", "## All factor values", "", "```",
        *(f"{k} = {v!r}" for k, v in dataclasses.asdict(f).items()), "```", "",
    ]
    return "\n".join(lines)


def _write_latents(out: Path, latents: list[dict]) -> None:
    """``latents.csv``: the designed low arousal ``a`` of every file (the known answer)."""
    lines = ["file,speaker,label,arousal"]
    lines += [f"{r['file']},{r['speaker']},{r['label']},{r['arousal']:.4f}" for r in latents]
    (out / "latents.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_readme(out: Path, kind: str, size: Size, seed: int, f: Factors) -> None:
    (out / "README.md").write_text(describe(kind, size, seed, f), encoding="utf-8")


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


# --- the same-label-space pair: an EmoDB-like target of the CASIA-like source -----------------
# EmoDB's speakers (odd-looking ids are EmoDB's own), their sex, its text codes, and the letters
# of the five emotions it shares with CASIA.
EMODB_SPEAKERS = [("03", False), ("08", True), ("09", True), ("10", False), ("11", False),
                  ("12", False), ("13", True), ("14", True), ("15", False), ("16", True)]
EMODB_TEXTS = ["a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10"]
EMODB_SHARED = {"angry": ("W", "anger"), "fear": ("A", "fear"), "happy": ("F", "happiness"),
                "neutral": ("N", "neutral"), "sad": ("T", "sadness")}


@dataclass(frozen=True)
class SiteShift:
    """What the EmoDB-like target of the same-label-space pair changes, with its sizes.

    Channel shift (the site, every recording):
        band_hz: low-pass edge (4th-order Butterworth).
        level_db: level change of the site.
        tilt: the coefficient c of the site's first-order spectral tilt 1 - c z^-1 (c < 0: a
            darker microphone; added to each speaker's own c).
        snr_db: noise floor below the speech of an average speaker at the site's level, in dB.
    Per-speaker offsets (each speaker's microphone and distance; constant within a speaker,
    unrelated to the emotions):
        speaker_gain_sd_db: standard deviation of a speaker's level offset, in dB.
        speaker_tilt_sd: standard deviation of a speaker's offset to the site's tilt
            coefficient c (c > 0 brighter, c < 0 darker; the sum clipped to +-0.9).
    """

    band_hz: float = 3400.0
    level_db: float = -6.0
    tilt: float = -0.5
    snr_db: float = 30.0
    speaker_gain_sd_db: float = 8.0
    speaker_tilt_sd: float = 0.5


def _channel_site(rng: np.random.Generator, x: np.ndarray, shift: SiteShift, gain_db: float,
                  tilt: float) -> np.ndarray:
    """The target site's channel: the speaker's tilt and level offset, the site's band limit,
    level and noise floor; 16 kHz."""
    y = lfilter([1.0, -tilt], [1.0], x)
    y = sosfilt(butter(4, shift.band_hz, "lowpass", fs=SR, output="sos"), y)
    site = 10 ** (shift.level_db / 20)
    y = site * 10 ** (gain_db / 20) * y
    noise = site * SPEECH_RMS * 10 ** (-shift.snr_db / 20) * rng.standard_normal(y.size)
    return (y + noise).astype(np.float32)


def make_emodb(out: str | Path, size: Size = "small", seed: int = 0,
               factors: Factors | None = None, shift: SiteShift | None = None) -> Path:
    """An EmoDB-like emotion corpus sharing the CASIA-like source's classes:
    ``wav/<speaker><text><emotion letter>a.wav``, 16 kHz, five emotions (EmoDB's boredom and
    disgust are not generated), the channel shift and per-speaker offsets of ``shift``
    (default :class:`SiteShift`); ``latents.csv`` holds every file's arousal and its speaker's
    offsets, ``README.md`` the sizes."""
    f, shift = factors or Factors(), shift or SiteShift()
    cfg = _size("emodb", size)
    out = Path(out)
    arousal = dict(f.emotion_arousal)
    latents = []
    for s_idx in range(cfg["speakers"]):
        name, female = EMODB_SPEAKERS[s_idx % len(EMODB_SPEAKERS)]
        if s_idx >= len(EMODB_SPEAKERS):
            name = f"{20 + s_idx:02d}"
        srng = np.random.default_rng([seed, 21, s_idx])
        spk = _speaker(srng.random(VOICE_PARAMS), female, f)
        tract = spk["tract"] * spk["formants"]
        gain_db = float(srng.normal(0, shift.speaker_gain_sd_db))
        tilt = float(np.clip(shift.tilt + srng.normal(0, shift.speaker_tilt_sd), -0.9, 0.9))
        for e_idx, (emotion, (letter, _)) in enumerate(EMODB_SHARED.items()):
            for t_idx in range(cfg["texts"]):
                text = EMODB_TEXTS[t_idx % len(EMODB_TEXTS)]
                rng = np.random.default_rng([seed, 22, s_idx, e_idx, t_idx])
                plan = np.random.default_rng([seed, 23, t_idx])  # same text for every speaker
                a = arousal[emotion] + rng.normal(0, f.source_arousal_sd)
                p = _prosody(spk, a, f, rng, EMOTION_EXTRAS[emotion])
                seconds = None if cfg["seconds"] is None else float(plan.uniform(*cfg["seconds"]))
                audio = voice(rng, p, tract, seconds, plan=plan) * 1.5
                rel = f"wav/{name}{text}{letter}a.wav"
                _write(out / rel, _channel_site(rng, audio, shift, gain_db, tilt), SR)
                latents.append({"file": rel, "speaker": name, "label": emotion, "arousal": a,
                                "gain_db": gain_db, "tilt": tilt})
    lines = ["file,speaker,label,arousal,speaker_gain_db,speaker_tilt"]
    lines += [f"{r['file']},{r['speaker']},{r['label']},{r['arousal']:.4f},{r['gain_db']:.3f},"
              f"{r['tilt']:.4f}" for r in latents]
    (out / "latents.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "README.md").write_text(describe_emodb(size, seed, f, shift), encoding="utf-8")
    return out


def describe_emodb(size: Size, seed: int, factors: Factors | None = None,
                   shift: SiteShift | None = None) -> str:
    """The README.md of a generated EmoDB-like corpus: layout, size, shared classes, the
    channel shift and the per-speaker offsets with their sizes."""
    f, shift = factors or Factors(), shift or SiteShift()
    cfg = _size("emodb", size)
    name = size if isinstance(size, str) else "custom"
    shared = ", ".join(f"{e} = `{letter}` ({german})" for e, (letter, german)
                       in EMODB_SHARED.items())
    lines = [
        "# Synthetic emodb corpus", "",
        f"Synthetic EmoDB-like emotion corpus (`transfer.data.synth`, size `{name}`, seed {seed}): "
        f"{cfg['speakers']} speakers x {len(EMODB_SHARED)} emotions x {cfg['texts']} texts, "
        "`wav/<speaker><text><emotion letter>a.wav`, 16 kHz. The same-label-space pair of the "
        "synthetic CASIA-like corpus: same emotions, same prosodic model, another site.", "",
        "Generated; not speech of real people (see `transfer/data/synth.py`).", "",
        "## Shared classes", "",
        f"CASIA's five emotions other than surprise, with EmoDB's letters: {shared}. EmoDB's "
        "boredom (`L`) and disgust (`E`) are not generated. Map them onto the source with "
        "`label_map = { anger = \"angry\", happiness = \"happy\", sadness = \"sad\" }`.", "",
        "## What differs from the source, and by how much", "",
        f"1. **Channel shift** (every recording): spectral tilt 1 - c z^-1 with c = "
        f"{shift.tilt:+g}, low-passed at {shift.band_hz:g} Hz, level {shift.level_db:+g} dB, "
        f"noise floor {shift.snr_db:g} dB below speech (the source: clean wideband, noise "
        f"{SOURCE_SNR_DB:g} dB below).",
        f"2. **Per-speaker offsets**: each speaker's level offset drawn with sd "
        f"{shift.speaker_gain_sd_db:g} dB and an offset to the tilt's c drawn with sd "
        f"{shift.speaker_tilt_sd:g} (c clipped to +-0.9); constant within a speaker, unrelated "
        "to the emotions. `latents.csv` lists every file's speaker level offset and tilt c.",
        "3. **Prosody and identity** as in the source: per unit of low arousal `a`, F0 "
        f"{f.f0_st:+g} semitones, rate x{np.exp(f.rate_log):.2f}, energy {f.energy_db:+g} dB; "
        f"`a` per emotion {', '.join(f'{e} {a:+g}' for e, a in f.emotion_arousal)}.", "",
        "## All values", "", "```",
        *(f"{k} = {v!r}" for k, v in dataclasses.asdict(shift).items()),
        *(f"{k} = {v!r}" for k, v in dataclasses.asdict(f).items()), "```", "",
    ]
    return "\n".join(lines)


MAKERS = {"casia": make_casia, "modma": make_modma, "emodb": make_emodb}


def make(kind: str, out: str | Path, size: Size = "small", seed: int = 0,
         factors: Factors | None = None) -> Path:
    """Write a synthetic corpus of ``kind`` (``casia`` | ``modma`` | ``emodb``) into ``out``.

    ``size``: a name from :data:`SIZES` or a mapping with the same keys; ``factors``: the
    designed factors (default :class:`Factors`)."""
    from transfer import UserError

    if kind not in MAKERS:
        raise UserError(f"--kind must be one of {sorted(MAKERS)}, not {kind!r}")
    if isinstance(size, str) and size not in SIZES[kind]:
        raise UserError(f"--size must be one of {sorted(SIZES[kind])}, not {size!r}")
    return MAKERS[kind](out, size, seed, factors)


def _checksums(folder: Path) -> dict[str, str]:
    from transfer.common.cache import file_sha256

    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".complete"}


def _damage(target: Path) -> str:
    """Why the cached corpus ``target`` cannot be used as it is ("" when it can): its
    ``.complete`` lists every file's SHA-256, as the other cache entries carry theirs."""
    import json

    try:
        recorded = json.loads((target / ".complete").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "written by an older version, without checksums"
    found = _checksums(target)
    changed = sorted(name for name in set(recorded) | set(found)
                     if recorded.get(name) != found.get(name))
    return (f"{len(changed)} file(s) missing, added or changed since it was generated, e.g. "
            f"{changed[0]}") if changed else ""


def cached(kind: str, size: str = "small", seed: int = 0) -> Path:
    """A synthetic corpus (default factors) in the cache, generated on first use (atomically).

    Every use checks its files against the checksums written with it: a recording deleted or
    overwritten is reported in one line and the corpus generated again, never used.
    """
    import json
    import os
    import shutil
    import tempfile

    from transfer.common.cache import cache_dir

    target = cache_dir() / "synth" / f"{kind}-{size}-seed{seed}-v{CACHE_VERSION}"
    if (target / ".complete").is_file():
        damage = _damage(target)
        if not damage:
            return target
        log.warning(f"cache: {target} is damaged or cannot be verified ({damage}); "
                    "generating it again")
        gone = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.damaged."))
        with contextlib.suppress(OSError):  # another process may have moved it already
            os.replace(target, gone / target.name)
        shutil.rmtree(gone, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        console.print(f"generating synthetic {kind} corpus ({size}, seed {seed}) into {target}")
        try:
            make(kind, tmp, size, seed)
            (tmp / ".complete").write_text(json.dumps({"files": _checksums(tmp)}))
        except (OSError, sf.SoundFileError) as err:  # a full or read-only cache disk
            from transfer import UserError

            free = shutil.disk_usage(target.parent).free / 2**20
            raise UserError(f"cannot generate the synthetic {kind} corpus in {target.parent}: "
                            f"{getattr(err, 'strerror', None) or err} ({free:.0f} MiB free "
                            "there); free space, or set SER_TRANSFER_CACHE to another "
                            "folder") from None
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
    sizes = sorted({s for table in SIZES.values() for s in table})
    parser.add_argument("--size", default="small", choices=sizes)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make(args.kind, args.out, args.size, args.seed)
    n = sum(1 for _ in path.rglob("*.wav"))
    console.print(f"wrote {n} wav files ({args.kind}, {args.size}, seed {args.seed}) to {path}; "
                  f"the factors are in {path / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
