"""Exported models, predict, inspect, and a custom source corpus from a card outside datasets/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_recipe, write_tone

from transfer import UserError
from transfer.grid.recipe import load_recipe
from transfer.run import run_recipe
from transfer.train.package import load_package


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    recipe = load_recipe(tiny_recipe(tmp / "r.toml", ["scratch", "finetune"]))
    recipe.export = True
    out, _, failed = run_recipe(recipe, results_dir=tmp / "res", progress=False)
    assert failed == 0
    return out


def test_export_writes_self_describing_packages(exported):
    assert {p.name for p in (exported / "models").glob("*.pt")} == {"scratch.pt", "finetune.pt"}
    assert len(list((exported / "models" / "runs").glob("*.pt"))) == 4
    raw = torch.load(exported / "models" / "finetune.pt", weights_only=True)  # plain data only
    assert raw["backbone"] == "timnet" and raw["labels"] == ["MDD", "HC"]
    assert raw["segments"]["seconds"] == 2.0 and raw["features"]["n_mfcc"] == 13
    assert raw["recipe_hash"] and raw["toolkit_version"] and raw["info"]["strategy"] == "finetune"


def test_predict_writes_file_and_subject_rows(exported, tiny_modma, tmp_path):
    subject = sorted(p for p in tiny_modma.iterdir() if p.is_dir())[0]
    out_csv = tmp_path / "preds.csv"
    res = subprocess.run([sys.executable, "-m", "transfer.predict",
                          str(exported / "models" / "finetune.pt"), str(subject),
                          "--out", str(out_csv)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out_csv)
    files = table[table["kind"] == "file"]
    assert len(files) == len(list(subject.glob("*.wav"))) and (files["segments"] >= 1).all()
    subj = table[table["kind"] == "subject"]
    assert len(subj) == 1 and subj["segments"].iloc[0] == files["segments"].sum()
    assert set(table["predicted"]) <= {"MDD", "HC"}
    assert (table["prob_MDD"] + table["prob_HC"]).round(4).eq(1).all()
    assert "resampled" in res.stderr  # 44.1 kHz audio, a 16 kHz model


@pytest.mark.slow
def test_predict_clear_errors(exported, tmp_path):
    model = str(exported / "models" / "scratch.pt")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    short = write_tone(tmp_path / "short.wav", seconds=0.01)
    good = write_tone(tmp_path / "good.wav", seconds=1.0)
    res = subprocess.run([sys.executable, "-m", "transfer.predict", model, str(bad), str(short),
                          str(good)], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "bad.wav: unreadable" in res.stderr and "short.wav: too short" in res.stderr
    assert "good.wav" in res.stdout
    notmodel = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, notmodel)
    with pytest.raises(UserError, match="not a ser-transfer model package"):
        load_package(notmodel)
    junk = tmp_path / "y.pt"
    junk.write_text("hello")
    res = subprocess.run([sys.executable, "-m", "transfer.predict", str(junk), str(good)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a ser-transfer model package" in res.stderr


@pytest.mark.parametrize("what", ["strategies", "backbones", "corpora"])
def test_inspect_lists_everything(what):
    res = subprocess.run([sys.executable, "-m", "transfer.inspect", what], capture_output=True,
                         text=True, check=True)
    names = {"strategies": ["scratch", "freeze", "finetune", "joint", "dann", "mmd_ae", "ddg",
                            "general_lr_scale", "align_every", "adv_weight"],
             "backbones": ["timnet", "transformer_timnet", "residual", "split", "tf_layers",
                           "ecapa", "ECAPA-TDNN", "attention_channels", "packs runs"],
             "corpora": ["casia", "iemocap", "ravdess", "emodb", "modma", "daic_woz",
                         "MODMA_ROOT"]}[what]
    for name in names:
        assert name in res.stdout, name


def _custom_corpus(tiny_casia: Path, tmp_path: Path) -> Path:
    """A corpus in a layout of its own: clips/<speaker>_<emotion>_<n>.wav, emotions in German."""
    german = {"angry": "wut", "sad": "trauer", "neutral": "neutral", "happy": "freude"}
    root = tmp_path / "mycorpus"
    for wav in tiny_casia.glob("*/*/*.wav"):
        speaker, emotion = wav.parts[-3], wav.parts[-2]
        if emotion in german:
            dest = root / "clips" / f"{speaker}_{german[emotion]}_{wav.stem}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(wav, dest)
    card = tmp_path / "cards" / "mycorpus.toml"
    card.parent.mkdir()
    card.write_text('''name = "mycorpus"
description = "a custom emotion corpus"
sample_rate = 16000
[audio]
glob = "clips/*.wav"
pattern = '^clips/(?P<speaker>[^_]+)_(?P<label>[a-z]+)_(?P<n>\\d+)\\.wav$'
[labels]
names = ["wut", "trauer", "neutral", "freude"]
map = { wut = "angry", trauer = "sad", freude = "happy" }
''')
    return root


@pytest.mark.slow
def test_custom_source_corpus_from_a_card_outside_datasets(tiny_casia, tmp_path):
    root = _custom_corpus(tiny_casia, tmp_path)
    recipe = tiny_recipe(tmp_path / "r.toml", ["freeze"])
    text = recipe.read_text().replace('[source]\ncorpus = "casia"\nsynthetic = "tiny"',
                                      f'[source]\ncorpus = "cards/mycorpus.toml"\nroot = "{root}"')
    recipe.write_text(text)
    res = subprocess.run([sys.executable, "-m", "transfer.run", str(recipe), "--results-dir",
                          str(tmp_path / "res"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "mycorpus -> modma" in (next((tmp_path / "res").glob("tiny/*/table.md"))).read_text()


def test_several_sources_pool_with_a_common_label_set(tiny_casia, tmp_path):
    from transfer.grid.experiment import Experiment

    root = _custom_corpus(tiny_casia, tmp_path)
    recipe = tiny_recipe(tmp_path / "r.toml", ["freeze"])
    text = recipe.read_text().replace(
        '[source]\ncorpus = "casia"\nsynthetic = "tiny"\nsegments = { seconds = 2.0, mode = "pad" }',
        f'[[source]]\ncorpus = "cards/mycorpus.toml"\nroot = "{root}"\n'
        'segments = { seconds = 2.0, mode = "pad" }\n'
        '[[source]]\ncorpus = "casia"\nsynthetic = "tiny"\nkeep = ["angry", "sad", "neutral"]\n'
        'segments = { seconds = 2.0, mode = "pad" }')
    recipe.write_text(text)
    exp = Experiment(load_recipe(recipe), base=tmp_path, progress=False).load()
    assert exp.source.name == "mycorpus+casia"
    assert exp.source.labels == ["angry", "sad", "neutral", "happy"]
    assert len(set(exp.source.groups)) == 4  # speakers stay distinct per corpus
    out, _, failed = run_recipe(load_recipe(recipe), results_dir=tmp_path / "res",
                                base=tmp_path, progress=False)
    assert failed == 0
