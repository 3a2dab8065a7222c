"""Bad input handled across the tools gets a clear error, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tiny_recipe, write_tone

from transfer import UserError
from transfer.common.config import ProtocolConfig
from transfer.data.audio import load_audio
from transfer.data.cards import load_card
from transfer.data.corpora import build_manifest, reason_counts
from transfer.data.domain import segment_spec
from transfer.data.synth import make
from transfer.evaluate.protocols import make_splits
from transfer.grid.recipe import apply_set, parse_recipe
from transfer.grid.records import RunRecord, read_records
from transfer.train.device import pick_device


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
    with pytest.raises(ValueError, match="a modma size needs the keys"):
        make("modma", tmp_path, size={"subjects": 4, "mdd": 2})


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


# --- bad audio (issue 16, item 2) ---------------------------------------------------------------

def _truncate(path, size: int = 100):
    path.write_bytes(path.read_bytes()[:size])
    return path


def _float_wav(path, value: float, sr: int = 16000):
    x = np.full(sr // 2, 0.1, np.float32)
    x[100] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="FLOAT")
    return path


def _bad_corpus(root):
    """A CASIA-layout corpus of 20 good files plus one file of every bad class."""
    for i in range(20):
        write_tone(root / f"spk{i % 2}" / "angry" / f"{i}.wav")
    _truncate(write_tone(root / "spk0/sad/truncated.wav", seconds=3.0))
    (root / "spk0/sad/random.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "spk0/sad/empty.wav").write_bytes(b"")
    _float_wav(root / "spk1/sad/nan.wav", np.nan)
    _float_wav(root / "spk1/sad/inf.wav", np.inf)
    write_tone(root / "spk1/sad/upper.WAV")
    write_tone(root / "spk1/sad/extra/deep.wav")
    stereo = np.stack([np.zeros(8000), np.full(8000, 0.2)], axis=1).astype(np.float32)
    sf.write(str(root / "spk1/sad/stereo.wav"), stereo, 16000)
    write_tone(root / "spk1/sad/rate8k.wav", sr=8000)
    return root


def test_every_bad_audio_class_is_skipped_with_its_reason_and_counted(tmp_path):
    m = build_manifest("casia", _bad_corpus(tmp_path / "c"), max_bad_share=0.5)
    reasons = dict(m.skipped)
    assert reasons["spk0/sad/truncated.wav"].startswith("truncated: the header promises 96000 "
                                                        "bytes of audio, the file holds 56")
    assert reasons["spk0/sad/random.wav"].startswith("unreadable:")
    assert reasons["spk0/sad/empty.wav"] == "empty file (0 bytes)"
    assert reasons["spk1/sad/nan.wav"] == "non-finite samples: 1 NaN/inf sample(s)"
    assert reasons["spk1/sad/inf.wav"] == "non-finite samples: 1 NaN/inf sample(s)"
    assert list(reason_counts(m.skipped).items()) == [
        ("non-finite samples", 2), ("empty file (0 bytes)", 1), ("truncated", 1),
        ("unreadable", 1)]
    unmatched = dict(m.unmatched)
    assert unmatched["spk1/sad/upper.WAV"].startswith("suffix case: '.WAV' is not '.wav'")
    assert unmatched["spk1/sad/extra/deep.wav"].startswith("wrong depth: 4 path levels")
    text = " ".join(m.warnings)
    assert "2 audio file(s) do not match the card" in text
    assert "1 file(s) have more than one channel and are mixed down to mono" in text
    assert "1 file(s) are not at the card's 16000 Hz (found [8000] Hz)" in text
    assert len(m.frame) == 22  # the 20 tones, the stereo and the 8 kHz file are used
    stereo = load_audio(str(tmp_path / "c/spk1/sad/stereo.wav"), 16000)
    assert np.allclose(stereo, 0.1, atol=1e-3)  # the mean of the two channels
    assert load_audio(str(tmp_path / "c/spk1/sad/rate8k.wav"), 16000).shape == (8000,)
    with pytest.raises(UserError, match=r"nan\.wav has 1 non-finite sample"):
        load_audio(str(tmp_path / "c/spk1/sad/nan.wav"), 16000)
    with pytest.raises(UserError, match=r"5 of 27 audio files are unusable \(2 non-finite"):
        build_manifest("casia", tmp_path / "c", max_bad_share=0.05)


def test_prepare_summary_lists_skips_and_unmatched_with_counts(tmp_path, capsys):
    from transfer.prepare import main

    root = _bad_corpus(tmp_path / "c")
    args = ["--corpus", "casia", "--root", str(root), "--max-bad-share", "0.5", "--seconds", "1"]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 5 and summary["skipped_by_reason"]["non-finite samples"] == 2
    assert summary["unmatched"] == 2
    assert summary["unmatched_by_reason"] == {"suffix case": 1, "wrong depth": 1}
    assert {s["path"] for s in summary["unmatched_files"]} == {"spk1/sad/upper.WAV",
                                                               "spk1/sad/extra/deep.wav"}
    assert main(args) == 0
    res = capsys.readouterr()
    assert "skipped spk0/sad/truncated.wav: truncated" in res.err
    assert "unmatched spk1/sad/upper.WAV: suffix case" in res.err
    assert "5 skipped" in res.out and "2 unmatched" in res.out
    assert ("skipped     2 non-finite samples, 1 empty file (0 bytes), 1 truncated, 1 unreadable"
            in res.out)
    assert "unmatched   1 suffix case, 1 wrong depth" in res.out
    assert "Traceback" not in res.err


# --- label tables -------------------------------------------------------------------------------

def _modma_copy(tiny_modma, tmp_path):
    root = tmp_path / "modma"
    shutil.copytree(tiny_modma, root)
    return root, root / "subjects_information_audio_lanzhou_2015.xlsx"


def test_subject_listed_twice(tiny_modma, tmp_path):
    root, xlsx = _modma_copy(tiny_modma, tmp_path)
    table = pd.read_excel(xlsx)
    same = pd.concat([table, table.iloc[[0]]], ignore_index=True)
    same.to_excel(xlsx, index=False)
    assert len(build_manifest("modma", root).frame) > 0  # an identical duplicate passes
    flipped = table.iloc[[2]].copy()
    flipped["type"] = "HC" if flipped["type"].iloc[0] == "MDD" else "MDD"
    pd.concat([table, flipped], ignore_index=True).to_excel(xlsx, index=False)
    subject = f"{int(table['subject id'].iloc[2]):08d}"
    with pytest.raises(UserError, match=rf"subject '{subject}' is listed twice with different "
                                        rf"labels: .*xlsx row 4 says .*row {len(table) + 2} says"):
        build_manifest("modma", root)


def test_subject_table_missing_or_without_a_subject(tiny_modma, tmp_path):
    root, xlsx = _modma_copy(tiny_modma, tmp_path)
    table = pd.read_excel(xlsx)
    table.iloc[1:].to_excel(xlsx, index=False)  # the first subject has no row
    m = build_manifest("modma", root)
    assert len(m.without_row) == 3 and f"{int(table['subject id'].iloc[0]):08d}" in m.without_row[0]
    assert any("3 audio file(s) have no row in the label table" in w for w in m.warnings)
    xlsx.unlink()
    with pytest.raises(UserError, match="no label table found; looked for .*subjects_information"):
        build_manifest("modma", root)


def test_utterance_listed_twice_in_label_lines(tmp_path):
    root = tmp_path / "IEMOCAP"
    write_tone(root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav")
    ev = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    ev.parent.mkdir(parents=True)
    ev.write_text("[1.0 - 2.0]\tSes01F_impro01_F000\tneu\t[1, 2, 3]\n"
                  "[1.0 - 2.0]\tSes01F_impro01_F000\tang\t[1, 2, 3]\n")
    with pytest.raises(UserError, match=r"utterance 'Ses01F_impro01_F000' is listed twice.*"
                                        r"line 1 says 'neu'.*line 2 says 'ang'"):
        build_manifest("iemocap", root)


# --- cards --------------------------------------------------------------------------------------

CARD = '''name = "mine"
sample_rate = {rate}
[audio]
glob = "*/*.wav"
pattern = '{pattern}'
[labels]
names = {names}
[segments]
seconds = {seconds}
'''
GOOD = {"rate": "16000", "pattern": r"^(?P<speaker>[^/]+)/(?P<label>[^/.]+)\.wav$",
        "names": '["a", "b"]', "seconds": "3.0"}


@pytest.mark.parametrize("change, message", [
    ({"rate": '"sixteen"'}, r"'sample_rate' must be a positive integer \(Hz\), got 'sixteen'"),
    ({"rate": "0"}, r"'sample_rate' must be a positive integer"),
    ({"names": '"ab"'}, r"\[labels\]: 'names' must be a list of strings, got 'ab'"),
    ({"seconds": '"ten"'}, r"\[segments\]: 'seconds' must be a number, got 'ten'"),
    ({"seconds": "0"}, r"\[segments\]: 'seconds' must be > 0"),
    ({"pattern": r"^(?P<speaker>[^/]+/(?P<label>.*)\.wav$"},
     r"\[audio\] pattern is not a valid regular expression \(missing \)"),
    ({"pattern": r"^[^/]+/(?P<label>[^/.]+)\.wav$"},
     r"speaker_format needs the named group\(s\) \['speaker'\] in \[audio\] pattern"),
    ({"pattern": r"^(?P<speaker>[^/]+)/[^/.]+\.wav$"},
     r"labels.source = 'path' needs the named group\(s\) \['label'\]"),
])
def test_card_values_of_the_wrong_type_or_shape(tmp_path, change, message):
    card = tmp_path / "mine.toml"
    card.write_text(CARD.format(**{**GOOD, **change}))
    with pytest.raises(UserError, match=message):
        load_card(card)


def test_good_card_of_that_form_loads(tmp_path):
    card = tmp_path / "mine.toml"
    card.write_text(CARD.format(**GOOD))
    assert load_card(card).segments.seconds == 3.0


# --- recipes: numeric ranges checked at load ----------------------------------------------------

BASE = {"target": {"corpus": "modma"}, "strategies": [{"name": "scratch"}]}


@pytest.mark.parametrize("assignment, message", [
    ("train.epochs=0", r"'train\.epochs' must be >= 1, got 0; 0 epochs would report an "
                       r"untrained model"),
    ("train.lr=0", r"'train\.lr' must be > 0, got 0\.0"),
    ("train.lr=-0.001", r"'train\.lr' must be > 0"),
    ("train.lr=nan", r"'train\.lr' must be > 0, got nan"),
    ("train.batch_size=0", r"'train\.batch_size' must be >= 1"),
    ("pretrain.epochs=0", r"'pretrain\.epochs' must be >= 1"),
    ("pretrain.lr=0", r"'pretrain\.lr' must be > 0"),
    ("pretrain.val_fraction=0", r"'pretrain\.val_fraction' must be in \(0, 1\)"),
    ("target.segments.seconds=0", r"'target\.segments\.seconds' must be > 0, got 0\.0; leave "
                                  r"it out for the default: the corpus card's, else 10 s"),
    ("target.segments.overlap_s=-1", r"'target\.segments\.overlap_s' must be >= 0"),
    ("target.max_bad_share=2", r"'target\.max_bad_share' must be in \[0, 1\]"),
    ("protocol.folds=1", r"'protocol\.folds' must be >= 2, got 1; subject-kfold needs a "
                         r"training and a test part; for one held-out subject per fold use "
                         r"protocol\.name = \"loso\""),
    ("protocol.val_fraction=1", r"'protocol\.val_fraction' must be in \(0, 1\)"),
    ("train.label_smoothing=1", r"'train\.label_smoothing' must be in \[0, 1\)"),
    ("train.betas=[0.9]", r"'train\.betas' must be two numbers in \[0, 1\)"),
    ("seeds=[1, 1]", r"'seeds' must be distinct seeds"),
    ("jobs=-2", r"'jobs' must be >= 0"),
    ("features.hop=0", r"'features\.hop' must be >= 1"),
    ("diagnostics.max_samples=1", r"'diagnostics\.max_samples' must be >= 2"),
    ("target.label_map.a=1", r"'target\.label_map\.a' must be a string, got 1"),
])
def test_numeric_recipe_values_are_range_checked_at_load(assignment, message):
    data = json.loads(json.dumps(BASE))
    apply_set(data, assignment)
    with pytest.raises(UserError, match=message):
        parse_recipe(data)


def test_segment_random_split_is_checked_at_load():
    data = {**BASE, "protocol": {"name": "segment-random", "split": [0.5, 0.2, 0.2]}}
    with pytest.raises(UserError, match=r"'protocol\.split' must be three shares > 0"):
        parse_recipe(data)
    data["protocol"]["name"] = "subject-kfold"  # unused by subject-kfold: not checked
    assert parse_recipe(data).protocol.split == [0.5, 0.2, 0.2]


def test_segment_length_absent_means_the_cards_explicitly():
    recipe = parse_recipe(json.loads(json.dumps(BASE)))
    assert recipe.target.segments.seconds is None
    card = load_card("modma")
    assert segment_spec(recipe.target, card, 16000).seconds == card.segments.seconds == 10.0
    data = json.loads(json.dumps(BASE))
    apply_set(data, "target.segments.seconds=4")
    assert segment_spec(parse_recipe(data).target, card, 16000).seconds == 4.0


def test_cli_range_error_is_one_line(tmp_path, capsys):
    from transfer.run import main

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--results-dir", str(tmp_path / "res"), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: recipe key 'train.epochs' must be >= 1" in err
    assert not (tmp_path / "res").exists()


# --- run records --------------------------------------------------------------------------------

def test_non_record_json_line_in_runs_jsonl_is_reported_and_ignored(tmp_path, capsys):
    good = {"key": "abc", "status": "ok", "strategy": "scratch", "fold": 0, "seed": 0,
            "protocol": "subject-kfold", "speaker_dependent": False, "metrics": {"unit_uar": 0.5},
            "curves": [], "confusion": [], "best_epoch": 1}
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(good) + "\n42\n[1, 2]\n{\"note\": \"hand-written\"}\n"
                    + json.dumps(good) + "\n{\"key\": \"tor")
    assert read_records(path) == [RunRecord.from_dict(good)] * 2
    err = capsys.readouterr().err
    for n in (2, 3, 4):
        assert f"line {n} is not a run record (" in err
    assert "line 6" not in err  # a torn last line is expected after a crash: silent


# --- predict ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def package_file(tmp_path_factory):
    """An untrained model package: predict's input checks need no training."""
    import backbones
    from transfer.data.audio import SegmentSpec
    from transfer.data.features import FeatureSpec
    from transfer.train.package import make_package, save_package

    torch.manual_seed(0)
    model = backbones.create("timnet", in_features=39, num_classes=2, filters=8, blocks=2,
                             split=1)
    package = make_package(model, backbone="timnet", segments=SegmentSpec(seconds=1.0, overlap_s=0.25),
                           features=FeatureSpec(), mean=torch.zeros(1, 39, 1),
                           std=torch.ones(1, 39, 1), labels=["MDD", "HC"], positive="MDD",
                           recipe_hash="test", info={})
    return save_package(package, tmp_path_factory.mktemp("pkg") / "model.pt")


def test_predict_refuses_audio_below_the_models_rate_unless_allowed(package_file, tmp_path,
                                                                    capsys):
    from transfer.predict import main

    write_tone(tmp_path / "s1" / "low.wav", seconds=1.5, sr=8000)
    write_tone(tmp_path / "s1" / "ok.wav", seconds=1.5, sr=16000)
    assert main([str(package_file), str(tmp_path / "s1")]) == 1
    res = capsys.readouterr()
    assert "Traceback" not in res.err
    assert ("low.wav: sample rate 8000 Hz is below the model's 16000 Hz" in res.err
            and "--allow-upsampling" in res.err)
    assert "low.wav" not in res.out and "ok.wav" in res.out
    assert main([str(package_file), str(tmp_path / "s1"), "--allow-upsampling"]) == 0
    res = capsys.readouterr()
    assert "low.wav" in res.out and "8000 Hz was upsampled (--allow-upsampling)" in res.err


def test_predict_names_truncated_and_non_finite_files(package_file, tmp_path):
    from transfer.predict import predict_files
    from transfer.train.package import load_package

    files = [_truncate(write_tone(tmp_path / "cut.wav", seconds=2.0)),
             _float_wav(tmp_path / "nan.wav", np.nan), _float_wav(tmp_path / "inf.wav", -np.inf),
             write_tone(tmp_path / "good.wav", seconds=1.5)]
    table, problems = predict_files(load_package(package_file), files)
    reasons = {Path(p).name: why for p, why in problems}
    assert reasons["cut.wav"].startswith("truncated: the header promises 64000 bytes")
    assert reasons["nan.wav"].startswith("non-finite samples") and "inf.wav" in reasons
    assert list(table["name"]) == [str(tmp_path / "good.wav"), str(tmp_path)]
