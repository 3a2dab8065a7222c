"""Bad input handled across the tools gets a clear error, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from transfer import UserError
from transfer.cards import load_card
from transfer.engine import pick_device
from transfer.protocols import make_splits
from transfer.recipe import ProtocolConfig
from transfer.synth import make


def test_cuda_requested_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA device"):
        pick_device("cuda")


def test_bad_synthetic_kind_and_size(tmp_path):
    with pytest.raises(UserError, match="--kind"):
        make("iemocap", tmp_path)
    with pytest.raises(UserError, match="--size"):
        make("casia", tmp_path, size="huge")


def test_segment_random_split_must_sum_to_one():
    groups, y = np.repeat(["a", "b"], 5), np.repeat([0, 1], 5)
    with pytest.raises(UserError, match="sum to 1"):
        make_splits(ProtocolConfig(name="segment-random", split=[0.5, 0.2, 0.2]), groups, y, [0])


def test_card_that_is_not_toml(tmp_path):
    card = tmp_path / "broken.toml"
    card.write_text("name = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_card(card)
    with pytest.raises(UserError, match="no corpus card 'nope'.*casia"):
        load_card("nope")


def test_negative_jobs_and_folder_without_audio(tmp_path):
    from conftest import tiny_recipe

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    res = subprocess.run([sys.executable, "-m", "transfer.run", str(path), "--results-dir",
                          str(tmp_path / "res"), "--quiet", "--jobs", "-1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--jobs" in res.stderr and "Traceback" not in res.stderr
    from transfer.predict import collect

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .wav or .flac files"):
        collect([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no such file"):
        collect([str(tmp_path / "missing.wav")])
    with pytest.raises(UserError, match="not a .wav or .flac"):
        collect([str(path)])
