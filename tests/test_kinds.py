"""Feature kinds register in one place (:mod:`transfer.data.kinds`): a kind registered in a
test's scope is read by recipes and extracted through the normal path (cards, segments, the
feature cache, ``load_domain``); one segment spec checks lengths for recipes, cards and code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from conftest import tiny_recipe

from transfer import UserError
from transfer.common.config import CorpusConfig, SegmentsConfig, SegmentSpec
from transfer.common.options import opt
from transfer.data import kinds
from transfer.data.domain import load_domain
from transfer.grid.recipe import load_recipe


@pytest.fixture
def scoped_kinds():
    """Feature kinds registered during the test are gone after it."""
    before = dict(kinds._REGISTRY)
    yield kinds.register
    kinds._REGISTRY.clear()
    kinds._REGISTRY.update(before)


@dataclass
class RmsOptions:
    """Args:
        frame: analysis window in samples.
        hop: samples between frames.
    """

    frame: int = opt(400, ge=1)
    hop: int = opt(320, ge=1)


def rms_frames(segments: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Reference: the RMS level of each frame. Shape: (N, S) -> (N, 1, frames)."""
    starts = range(0, segments.shape[1] - frame + 1, hop)
    return np.stack([[np.sqrt((s[a:a + frame] ** 2).mean()) for a in starts]
                     for s in segments])[:, None, :].astype(np.float32)


def register_rms(register: Any) -> None:
    """A toy kind: one channel, the frame RMS level."""

    @register("toy_rms")
    class ToyRms(kinds.FeatureKind):
        Options = RmsOptions

        def extract(self, segments: np.ndarray, sample_rate: int, opts: Any) -> np.ndarray:
            return rms_frames(segments, opts.frame, opts.hop)

        def dim(self, opts: Any) -> int:
            return 1

        def frames(self, opts: Any, samples: int) -> int:
            return 1 + (samples - opts.frame) // opts.hop

        def min_samples(self, opts: Any) -> int:
            return opts.frame


def test_a_kind_registered_in_scope_extracts_through_the_normal_path(scoped_kinds, tiny_casia,
                                                                     tmp_path, caplog):
    register_rms(scoped_kinds)
    assert "toy_rms" in kinds.names()
    cfg = CorpusConfig(corpus="casia", root=str(tiny_casia),
                       segments=SegmentsConfig(seconds=1.0, mode="pad"))
    mfcc = load_domain([cfg], kinds.make_spec(), progress=False)
    assert mfcc.x.shape[1] == 39
    with caplog.at_level(logging.INFO, logger="transfer.data.features"):
        toy = load_domain([cfg], kinds.make_spec("toy_rms", hop=800), progress=False)
    # the cache held this corpus under the mfcc key only: a one-line note, then extraction
    assert any("features of casia: none cached under these settings" in r.getMessage()
               for r in caplog.records)
    assert toy.x.shape == (len(mfcc.x), 1, 1 + (16000 - 400) // 800)
    from transfer.data.audio import cut, load_audio

    first = toy.files[0]
    pieces, _ = cut(load_audio(first, 16000), SegmentSpec(seconds=1.0, mode="pad"))
    np.testing.assert_allclose(toy.x[0], rms_frames(np.stack(pieces), 400, 800)[0], rtol=1e-5)
    again = load_domain([cfg], kinds.make_spec("toy_rms", hop=800), progress=False)
    assert again.keys == toy.keys and toy.keys != mfcc.keys  # the kind's options key the cache


def test_recipes_read_the_registry(scoped_kinds, tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"],
                       extra='[features]\nkind = "toy_rms"\nhop = 160\n')
    with pytest.raises(UserError, match=r"'features.kind' must be one of 'mfcc', 'logmel', "
                                        r"'ssl', got 'toy_rms'"):
        load_recipe(path)
    register_rms(scoped_kinds)
    recipe = load_recipe(path)
    assert recipe.features.kind == "toy_rms" and recipe.features.options == {"frame": 400,
                                                                             "hop": 160}
    path.write_text(path.read_text().replace("hop = 160", "n_mfcc = 13"))
    with pytest.raises(UserError, match=r"'features.n_mfcc' is not an option of features.kind "
                                        r"= 'toy_rms'; its options: frame, hop"):
        load_recipe(path)


def test_one_segment_spec_checks_lengths_for_recipes_cards_and_code(tmp_path):
    with pytest.raises(UserError, match=r"segments: 'mode' must be one of 'pad', 'window', "
                                        r"'concat', got 'chunks'"):
        SegmentSpec(mode="chunks")  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"segments: 'overlap_s' must be < seconds \(2\) in "
                                        r"window mode, got 3"):
        SegmentSpec(seconds=2.0, overlap_s=3.0)
    card = SegmentsConfig(seconds=2.0, mode="window")  # a card's defaults
    assert SegmentsConfig(overlap_s=0.5).resolve(card, sample_rate=8000) == SegmentSpec(
        seconds=2.0, mode="window", overlap_s=0.5, sample_rate=8000)
    assert SegmentsConfig(mode="pad").resolve(card, sample_rate=8000).mode == "pad"
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    path.write_text(path.read_text().replace("overlap_s = 0.5", "overlap_s = 5.0"))
    with pytest.raises(UserError, match=r"recipe key 'target.segments.overlap_s' must be < "
                                        r"seconds"):
        load_recipe(path)
