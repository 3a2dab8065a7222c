"""Reliability round two (issue 28), inputs: which class is positive, damaged or degenerate audio
and caches, settings that pass alone but not together, model packages, and every input that
raised a traceback: each is used, skipped with its reason, or one line naming it."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import one_line, tiny_recipe, write_tone

from transfer import REPO_ROOT, UserError
from transfer.common.config import CorpusConfig, FeatureSpec, SegmentsConfig
from transfer.data import load_domain
from transfer.data.audio import probe
from transfer.data.cards import load_card
from transfer.data.corpora import build_manifest
from transfer.grid.recipe import apply_set, load_recipe, parse_recipe

# --- case 7: which class is positive -------------------------------------------------------------

def test_binary_target_must_name_its_positive_class(tmp_path):
    """A card without ``positive`` and a recipe that sets none: sens/spec would silently be
    the recall of whichever label comes second (before: EmoDB low-affect vs neutral)."""
    from transfer.grid.experiment import Experiment

    card = tmp_path / "modma.toml"
    card.write_text((REPO_ROOT / "datasets" / "modma.toml").read_text()
                    .replace('positive = "MDD"', ""))
    assert load_card(card).labels.positive == ""
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    path.write_text(path.read_text().replace('[target]\ncorpus = "modma"',
                                             f'[target]\ncorpus = "{card}"'))
    with pytest.raises(UserError, match=r"binary \('MDD' vs 'HC'\) but it names no positive"):
        Experiment(load_recipe(path), progress=False).load()
    with pytest.raises(UserError, match="its positive class 'mdd' is not one of them"):
        Experiment(load_recipe(path, ["target.positive=mdd"]), progress=False).load()
    exp = Experiment(load_recipe(path, ["target.positive=HC"]), progress=False).load()
    assert exp.target.positive == "HC" and exp.target.positive_index == 1


# --- case 8: damaged inputs used without a word ------------------------------------------------------

def test_damaged_synthetic_corpus_is_reported_and_generated_again(tmp_path, monkeypatch, capsys):
    from transfer.common.cache import file_sha256
    from transfer.data.synth import cached

    monkeypatch.setenv("SER_TRANSFER_CACHE", str(tmp_path))
    root = cached("casia", "tiny", seed=0)
    first, second = sorted(root.rglob("*.wav"))[:2]
    sums = {p: file_sha256(p) for p in (first, second)}
    first.write_bytes(np.random.default_rng(0).bytes(first.stat().st_size))  # noise, same size
    second.unlink()
    capsys.readouterr()
    assert cached("casia", "tiny", seed=0) == root
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "is damaged" in ln]
    assert f"cache: {root} is damaged" in line and "2 file(s) missing, added or changed" in line
    assert {p: file_sha256(p) for p in (first, second)} == sums  # generated again, the same


def _compressed(path: Path, fmt: str, keep: float) -> Path:
    """A 5.74-s tone encoded as ``fmt``, cut to ``keep`` of its bytes (a broken copy)."""
    sr = 16000
    t = np.arange(int(5.74 * sr)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])
    return path


@pytest.mark.parametrize("fmt", ["FLAC", "MP3"])
def test_truncated_compressed_audio_is_skipped_with_its_reason(tmp_path, fmt):
    """(before: an MP3 cut to 1.8 of 5.74 s was used as a short clip, '0 skipped'; a cut FLAC
    passed the probe and then aborted the whole corpus load)."""
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    suffix = fmt.lower()
    good = _compressed(tmp_path / f"good.{suffix}", fmt, 1.0)
    cut = _compressed(tmp_path / f"cut.{suffix}", fmt, 0.3)
    assert not isinstance(probe(good), str)
    assert probe(cut).startswith("truncated: ")
    card = tmp_path / "mine.toml"
    card.write_text(f'name = "mine"\nsample_rate = 16000\n[audio]\nglob = "*/*/*.{suffix}"\n'
                    f"pattern = '^(?P<speaker>[^/]+)/(?P<label>[^/]+)/[^/]+\\.{suffix}$'\n"
                    '[labels]\nnames = ["a", "b"]\n')
    for i in range(24):
        (tmp_path / "c" / f"s{i % 2}" / "ab"[i % 4 // 2]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / f"s{i % 2}" / "ab"[i % 4 // 2] / f"{i}.{suffix}").write_bytes(
            good.read_bytes())
    (tmp_path / "c" / "s0" / "a" / f"cut.{suffix}").write_bytes(cut.read_bytes())
    m = build_manifest(load_card(card), tmp_path / "c")
    assert [(p, why.split(":")[0]) for p, why in m.skipped] == [(f"s0/a/cut.{suffix}",
                                                                 "truncated")]
    domain = load_domain([CorpusConfig(corpus=str(card), root=str(tmp_path / "c"),
                                       segments=SegmentsConfig(1.0, "pad"))],
                         FeatureSpec(), progress=False)
    assert len(domain.y) == 24


def test_audio_shorter_than_one_analysis_frame_is_skipped(tmp_path):
    """A 1-sample WAV (before: a silent labelled segment; predict called it too short)."""
    root = tmp_path / "c"
    for i in range(24):
        write_tone(root / f"spk{i % 2}" / ["angry", "sad"][i % 4 // 2] / f"{i}.wav")
    sf.write(str(root / "spk0" / "sad" / "one.wav"), np.zeros(1, np.float32), 16000)
    domain = load_domain([CorpusConfig(corpus="casia", root=str(root), max_bad_share=0.1)],
                         FeatureSpec(), progress=False)
    assert len(domain.y) == 24 and not any(f.endswith("one.wav") for f in domain.files)
    m = build_manifest("casia", root, max_bad_share=0.1, min_seconds=800 / 16000)
    assert dict(m.skipped)["spk0/sad/one.wav"].startswith("too short: 0.0625 ms, less than one "
                                                          "analysis frame of the features (50 ms)")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> dict:
    """An untrained model package: predict's input checks need no training."""
    import backbones
    from transfer.data.audio import SegmentSpec
    from transfer.data.features import FeatureSpec
    from transfer.train.package import make_package

    torch.manual_seed(0)
    model = backbones.create("timnet", in_features=39, num_classes=2, filters=8, blocks=2,
                             split=1)
    return make_package(model, backbone="timnet", segments=SegmentSpec(seconds=1.0, overlap_s=0.25),
                        features=FeatureSpec(), mean=torch.zeros(1, 39, 1),
                        std=torch.ones(1, 39, 1), labels=["MDD", "HC"], positive="MDD",
                        recipe_hash="test", info={})


def _tampered(package: dict, path: Path, change) -> Path:
    from transfer.train.package import save_package

    copy = {k: (dict(v) if isinstance(v, dict) else v) for k, v in package.items()}
    change(copy)
    return save_package(copy, path)


def _zero_std(p: dict) -> None:
    p["norm_std"] = torch.zeros(1, 39, 1)


def _extra_option(p: dict) -> None:
    p["options"]["colour"] = "blue"


def _missing_option(p: dict) -> None:
    del p["options"]["filters"]  # the default (39) does not fit the weights of 8 filters


def _other_shape(p: dict) -> None:
    name = next(k for k, v in p["state"].items() if v.ndim > 1)
    p["state"] = {**p["state"], name: torch.zeros(3, 3)}


def _unknown_backbone(p: dict) -> None:
    p["backbone"] = "resnet"


def _one_label(p: dict) -> None:
    p["labels"], p["positive"] = ["MDD"], "MDD"


def _string_rate(p: dict) -> None:
    p["segments"]["sample_rate"] = "16000"


@pytest.mark.parametrize("change, message", [
    (_zero_std, "the feature standardisation must be finite, with std > 0"),
    (_extra_option, "weights and options do not fit backbone 'timnet': backbone 'timnet': "
                    "unknown option(s) ['colour']"),
    (_missing_option, "weights and options do not fit backbone 'timnet': Error(s) in loading"),
    (_other_shape, "weights and options do not fit backbone 'timnet': Error(s) in loading"),
    (_unknown_backbone, "unknown backbone 'resnet'"),
    (_one_label, "'labels' must name two or more distinct classes"),
    (_string_rate, "'segments' settings: segments: 'sample_rate' must be an integer"),
])
def test_unusable_model_package_is_one_line(package, tmp_path, capsys, change, message):
    """(before: a traceback each; with norm_std = 0, 'MDD' from NaN probabilities, exit 0)."""
    from transfer.predict import main

    path = _tampered(package, tmp_path / "model.pt", change)
    wav = write_tone(tmp_path / "s1" / "a.wav", seconds=1.5)
    assert main([str(path), str(wav)]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_predict_skips_absurd_samples_and_notes_stereo(package, tmp_path, capsys):
    """A float WAV with a finite sample of 1e30 is skipped like the other unusable files
    (before: it aborted the whole batch); a stereo file is used and said to be mixed down."""
    from transfer.predict import predict_files

    x = np.full(24000, 0.1, np.float32)
    x[100] = 1e30
    sf.write(str(tmp_path / "huge.wav"), x, 16000, subtype="FLOAT")
    stereo = np.stack([np.zeros(24000), np.full(24000, 0.2)], axis=1).astype(np.float32)
    sf.write(str(tmp_path / "stereo.wav"), stereo, 16000)
    good = write_tone(tmp_path / "good.wav", seconds=1.5)
    capsys.readouterr()
    table, problems = predict_files(package, [tmp_path / "huge.wav", tmp_path / "stereo.wav",
                                              good], group_by="none")
    assert [(Path(p).name, why[:24]) for p, why in problems] == [
        ("huge.wav", "out of range: samples up")]
    assert list(table["name"]) == [str(tmp_path / "stereo.wav"), str(good)]
    assert ("note: 1 file(s) have more than one channel and were mixed down to mono, e.g. "
            f"{tmp_path / 'stereo.wav'}") in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing/preds.csv", "."])
def test_predict_out_is_checked_before_predicting(package, tmp_path, monkeypatch, capsys, where):
    import transfer.predict
    from transfer.train.package import save_package

    def no_prediction(*args, **kw):
        raise AssertionError("predicted before checking --out")

    monkeypatch.setattr(transfer.predict, "predict_files", no_prediction)
    path = save_package(package, tmp_path / "model.pt")
    wav = write_tone(tmp_path / "a.wav", seconds=1.5)
    assert transfer.predict.main([str(path), str(wav), "--out", str(tmp_path / where)]) == 2
    line = one_line(capsys.readouterr().err)
    assert ("does not exist" if where != "." else "is a folder") in line


# --- settings that pass one by one, not together; ranges --------------------------------------------

BASE = {"target": {"corpus": "modma"}, "strategies": [{"name": "scratch"}]}


@pytest.mark.parametrize("assignments, message", [
    (["features.n_mfcc=60", "features.n_mels=40"], r"'features\.n_mfcc' must be <= "
                                                   r"features\.n_mels \(40\), got 60"),
    (["target.segments.seconds=1e-6"], r"segments of 1e-06 s hold no sample at 16000 Hz"),
    (["target.segments.seconds=0.05"], r"a segment of 0\.05 s gives 2 feature frame\(s\) "
                                       r"\(mfcc, hop 512\); at least 3 are needed: use "
                                       r"features\.hop <= 400 or target\.segments\.seconds >= "
                                       r"0\.064"),
    (["target.segments.seconds=2", "features.hop=100000"], r"gives 1 feature frame\(s\)"),
    (["seeds=[-1]"], r"'seeds' must be a list of numbers in \[0, 2\.14748e\+09\], got \[-1\]"),
    (["seeds=[4294967296]"], r"'seeds' must be a list of numbers in \[0, 2\.14748e\+09\]"),
    (["pretrain.seed=-1"], r"'pretrain\.seed' must be"),
    (["protocol.split_seed=-3"], r"'protocol\.split_seed' must be"),
    (["train.pack=-1"], r"'train\.pack' must be >= 0, got -1"),
])
def test_settings_that_cannot_work_are_refused_at_load(assignments, message):
    """(before: each passed --dry-run; a run then raised a traceback or, for n_mfcc above
    n_mels, silently computed 40 coefficients while the package said 60)."""
    data = json.loads(json.dumps(BASE))
    for assignment in assignments:
        apply_set(data, assignment)
    with pytest.raises(UserError, match=message):
        parse_recipe(data)


def test_card_segment_length_is_checked_by_dry_run(tmp_path, capsys):
    """The card's 10-s window of MODMA with a hop of 100000 samples: one line at --dry-run."""
    from transfer.run import main

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    path.write_text(path.read_text().replace(  # the cards' lengths: 10 s (modma), 6 s (casia)
        'segments = { seconds = 2.0, mode = "window", overlap_s = 0.5 }', "").replace(
        'segments = { seconds = 2.0, mode = "pad" }', ""))
    assert main([str(path), "--dry-run", "--set", "features.hop=100000"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "corpus 'modma': a segment of 10 s gives 2 feature frame(s)" in line


@pytest.mark.parametrize("options, message", [
    (['backbone.options.attention="mha"', "backbone.options.heads=0"],
     "option 'heads' must be >= 1, got 0"),
    (["backbone.options.layer_weights=5"], "layer_weights needs stacked layers"),
])
def test_backbone_that_cannot_be_built_is_one_line_before_training(tmp_path, capsys, options,
                                                                    message):
    """heads = 0 with attention = "mha" (before: ZeroDivisionError in pretraining, or every
    run failed), and options that only the data can refuse (layer weights over MFCC)."""
    from transfer.run import main

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    sets = [arg for option in options for arg in ("--set", option)]
    code = main([str(path), "--quiet", "--results-dir", str(tmp_path / "res"), *sets])
    assert code == 2 and message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "res").exists()


def test_segments_too_long_for_memory_are_refused_before_extraction(tiny_modma, monkeypatch):
    """Hours-long segments (before: MemoryError after a while). 1000 h here, so that no
    machine has the memory; extraction must not even start."""
    import transfer.data.features

    def no_extraction(*args, **kw):
        raise AssertionError("extraction started")

    monkeypatch.setattr(transfer.data.features, "_extract_all", no_extraction)
    cfg = CorpusConfig(corpus="modma", root=str(tiny_modma),
                       segments=SegmentsConfig(3.6e6, "window", 2.5))
    with pytest.raises(UserError, match=r"24 segments of 3\.6e\+06 s need about .* GiB of "
                                        r"memory .* use shorter segments"):
        load_domain([cfg], FeatureSpec(), progress=False)


# --- raw tracebacks of inputs -------------------------------------------------------------------------

CARD = '''name = "mine"
sample_rate = 16000
[audio]
glob = {glob}
pattern = '^(?P<speaker>[^/]+)/(?P<label>[^/.]+)\\.wav$'
[labels]
names = ["a", "b"]
'''


@pytest.mark.parametrize("glob", ['""', '"/data/*/*.wav"', '"../other/*/*.wav"'])
def test_card_glob_must_be_relative_and_non_empty(tmp_path, glob):
    card = tmp_path / "mine.toml"
    card.write_text(CARD.format(glob=glob))
    with pytest.raises(UserError, match=r"\[audio\] glob must be a non-empty pattern relative "
                                        r"to the corpus root"):
        load_card(card)


def test_recipe_and_card_that_are_not_utf8(tmp_path):
    (tmp_path / "r.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(UserError, match=r"recipe .*r\.toml is not UTF-8 text \(byte 0xe9 at "
                                        r"position 11\); save it as UTF-8"):
        load_recipe(tmp_path / "r.toml")
    (tmp_path / "c.toml").write_bytes(CARD.format(glob='"*/*.wav"').encode() + b"# \xff\n")
    with pytest.raises(UserError, match=r"card .*c\.toml is not UTF-8 text \(byte 0xff"):
        load_card(tmp_path / "c.toml")


@pytest.mark.parametrize("seconds, message", [
    ("nan", "--seconds must be a finite number of seconds > 0, got nan"),
    ("inf", "--seconds must be a finite number of seconds > 0, got inf"),
    ("1e-9", "segments of 1e-09 s hold no sample at 16000 Hz"),
])
def test_prepare_seconds_out_of_range_is_one_line(tiny_casia, capsys, seconds, message):
    from transfer.prepare import main

    assert main(["--corpus", "casia", "--root", str(tiny_casia), "--seconds", seconds]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_prepare_can_set_the_window_overlap(tiny_modma, capsys):
    """A window-mode card with --seconds 2: the default overlap of 2.5 s cannot fit (before:
    prepare had no way to set it, so --seconds <= 2.5 always failed)."""
    from transfer.prepare import main

    args = ["--corpus", "modma", "--root", str(tiny_modma), "--seconds", "2", "--json"]
    assert main(args) == 2
    assert "a window-mode segment overlaps the next by overlap_s" in one_line(
        capsys.readouterr().err)
    assert main(args + ["--overlap", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["segment"]["overlap_s"] == 0.5 and summary["segments"] > summary["files"]


def test_cache_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch, tiny_casia, capsys):
    from transfer.prepare import main

    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("SER_TRANSFER_CACHE", str(tmp_path / "cache"))
    assert main(["--corpus", "casia", "--root", str(tiny_casia), "--seconds", "1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"cannot use the cache folder {tmp_path / 'cache'} (SER_TRANSFER_CACHE): it is a " \
           "file" in line


def test_full_cache_disk_names_the_cache_entry(tmp_path):
    from transfer.common.cache import store_entry

    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as torch.save raises it

    with pytest.raises(UserError, match=rf"cannot write the cache entry {tmp_path}/pretrained/"
                                        r"abc\.pt: No space left on device; free space there, "
                                        r"or set SER_TRANSFER_CACHE"):
        store_entry(tmp_path / "pretrained", "abc", ".pt", full)
    assert not list((tmp_path / "pretrained").iterdir())


def test_full_disk_while_generating_a_synthetic_corpus_is_one_line(tmp_path, monkeypatch):
    import transfer.data.synth

    def full(*args, **kw):  # what libsndfile raises when the disk is full
        raise sf.LibsndfileError(2, prefix="Error opening 'x.wav': ")

    monkeypatch.setenv("SER_TRANSFER_CACHE", str(tmp_path))
    monkeypatch.setattr(transfer.data.synth.sf, "write", full)
    with pytest.raises(UserError, match=rf"cannot generate the synthetic casia corpus in "
                                        rf"{tmp_path}/synth: .*System error.* MiB free there"):
        transfer.data.synth.cached("casia", "tiny", seed=9)
    assert [p.name for p in (tmp_path / "synth").iterdir()] == []  # nothing half-made left


def test_card_pattern_that_matches_no_file_is_named(tmp_path):
    """(before: 'no usable audio ... after label filtering', where no label was filtered)."""
    for i in range(4):
        write_tone(tmp_path / "c" / f"spk{i}" / f"{i}.wav")
    card = tmp_path / "mine.toml"
    card.write_text(CARD.format(glob='"*/*.wav"').replace("[^/.]+)", "[0-9]+)_x"))
    with pytest.raises(UserError) as info:
        build_manifest(load_card(card), tmp_path / "c")
    msg = str(info.value)
    assert "none of the 4 audio file(s)" in msg and "4 do not match the card (e.g. " \
           "spk0/0.wav: pattern: does not match the card's [audio] pattern)" in msg
    assert "label filter" not in msg


if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX paths", allow_module_level=True)
