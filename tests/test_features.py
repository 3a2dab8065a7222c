"""Segments, features, the feature cache and synthetic corpora."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from transfer import UserError
from transfer.data.audio import SegmentSpec, cut, load_audio
from transfer.data.corpora import build_manifest
from transfer.data.features import FeatureSpec, extract, load_features
from transfer.data.kinds import make_spec
from transfer.data.synth import make


def test_pad_mode_pads_and_truncates():
    spec = SegmentSpec(seconds=1.0, mode="pad", sample_rate=100)
    short, starts = cut(np.ones(30, np.float32), spec)
    assert len(short) == 1 and short[0].shape == (100,) and short[0][29] == 1 and short[0][30] == 0
    long_, _ = cut(np.arange(250, dtype=np.float32), spec)
    assert len(long_) == 1 and long_[0][-1] == 99


def test_center_alignment_for_official_timnet_features():
    spec = SegmentSpec(seconds=1.0, mode="pad", align="center", sample_rate=100)
    (seg,), _ = cut(np.ones(50, np.float32), spec)
    assert seg[:25].sum() == 0 and seg[25:75].sum() == 50 and seg[75:].sum() == 0
    (crop,), _ = cut(np.arange(200, dtype=np.float32), spec)
    assert crop[0] == 50


def test_window_mode_overlaps_and_pads_the_last():
    spec = SegmentSpec(seconds=10.0, mode="window", overlap_s=2.5, sample_rate=10)
    segs, starts = cut(np.ones(250, np.float32), spec)  # 25 s
    assert starts == [0.0, 7.5, 15.0, 22.5][: len(starts)] and len(segs) == 3
    assert all(s.shape == (100,) for s in segs)
    assert segs[-1][:100 - 0].sum() == 100  # 15..25 s is exactly full
    segs, starts = cut(np.ones(50, np.float32), spec)  # shorter -> one padded segment
    assert len(segs) == 1 and segs[0].sum() == 50


def test_concat_mode_cuts_back_to_back():
    spec = SegmentSpec(seconds=1.0, mode="concat", sample_rate=10)
    segs, starts = cut(np.ones(34, np.float32), spec)
    assert starts == [0.0, 1.0, 2.0] and len(segs) == 3  # 4 s remainder < half: dropped
    assert segs[-1].sum() == 10


def test_bad_segment_settings_are_errors():
    with pytest.raises(UserError, match="mode"):
        SegmentSpec(mode="chunks")
    with pytest.raises(UserError, match="overlap"):
        SegmentSpec(seconds=2.0, mode="window", overlap_s=3.0)


def test_ten_seconds_at_16k_is_39_by_313():
    x = np.random.default_rng(0).standard_normal((2, 160000)).astype(np.float32)
    assert extract(x, 16000, FeatureSpec()).shape == (2, 39, 313)
    assert extract(x[:, :96000], 16000, FeatureSpec()).shape == (2, 39, 188)
    assert extract(x, 16000, make_spec(kind="logmel", n_mels=40)).shape == (2, 40, 313)
    assert extract(x, 16000, make_spec(deltas=1)).shape == (2, 26, 313)


def test_resampling_to_target_rate(tmp_path):
    from conftest import write_tone

    path = write_tone(tmp_path / "a.wav", seconds=1.0, sr=44100)
    assert load_audio(str(path), 16000).shape == (16000,)


def test_cache_miss_then_hit(tiny_modma):
    m = build_manifest("modma", tiny_modma)
    seg, feat = SegmentSpec(seconds=2.0, mode="window", overlap_s=0.5), FeatureSpec()
    first = load_features(m, seg, feat, progress=False)
    second = load_features(m, seg, feat, progress=False)
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.x, second.x)
    assert first.x.shape[1:] == (39, 63)
    assert list(first.segments.columns) == ["file", "speaker", "label", "start_s"]
    assert first.segments["speaker"].nunique() == 8
    # each segment remembers its file and subject
    row = first.segments.iloc[-1]
    assert Path(row["file"]).parent.name == row["speaker"]
    other = load_features(m, SegmentSpec(seconds=3.0, mode="window", overlap_s=0.5), feat,
                          progress=False)
    assert not other.cache_hit and other.key != first.key


def test_concat_mode_groups_a_subject(tiny_modma):
    m = build_manifest("modma", tiny_modma)
    fs = load_features(m, SegmentSpec(seconds=4.0, mode="concat"), FeatureSpec(), progress=False)
    per_subject = fs.segments.groupby("speaker").size()
    assert len(per_subject) == 8 and (per_subject >= 2).all()


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", ["casia", "modma"])
def test_synth_same_seed_same_bytes(tmp_path, kind):
    a = make(kind, tmp_path / "a", "tiny", seed=3)
    b = make(kind, tmp_path / "b", "tiny", seed=3)
    c = make(kind, tmp_path / "c", "tiny", seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_synth_prosody_differs_by_class(tiny_casia):
    """Emotions act on energy: angry clips are louder than sad ones on average."""
    import soundfile as sf

    def rms(label: str) -> float:
        vals = [np.sqrt(np.mean(sf.read(str(p))[0] ** 2))
                for p in tiny_casia.glob(f"*/{label}/*.wav")]
        return float(np.mean(vals))

    assert rms("angry") > 1.5 * rms("sad")


@pytest.mark.parametrize("seed", [0, 2])
def test_synth_target_voices_are_balanced_across_labels(tmp_path, seed):
    """Voices are drawn per group by Latin hypercube, so gender (voice parameter 0 < 0.55) is
    split the same way in both groups: 10 subjects give 5 or 6 women in each (independent
    draws gave 8 vs 7 for seed 0 and 7 vs 1 for seed 2). The README states the factors."""
    import pandas as pd

    from transfer.data.synth import Factors

    size = {"subjects": 20, "mdd": 10, "recordings": 1, "seconds": (0.3, 0.4)}
    root = make("modma", tmp_path, size, seed=seed)
    table = pd.read_excel(root / "subjects_information_audio_lanzhou_2015.xlsx")
    women = table[table["gender"] == "F"].groupby("type").size()
    assert set(women.index) == {"MDD", "HC"} and women.between(5, 6).all(), women
    readme = (root / "README.md").read_text()
    assert "20 subjects (10 MDD, 10 HC)" in readme
    assert f"depression_shift = {Factors().depression_shift!r}" in readme
    latents = pd.read_csv(root / "latents.csv")
    assert len(latents) == 20 and set(latents["label"]) == {"MDD", "HC"}
