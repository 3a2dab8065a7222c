"""Corpus cards parse tiny trees of their real layouts; bad input gets a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tone

from transfer import UserError
from transfer.data.cards import available_cards, load_card
from transfer.data.corpora import build_manifest


def test_every_shipped_card_parses():
    names = available_cards()
    assert {"casia", "iemocap", "ravdess", "emodb", "modma", "daic_woz"} <= set(names)
    for name in names:
        assert load_card(name).labels.names


def test_casia_layout(tiny_casia):
    m = build_manifest("casia", tiny_casia)
    assert list(m.frame.columns) == ["path", "corpus", "label", "speaker", "duration_s",
                                     "sample_rate"]
    assert len(m.frame) == 2 * 6 * 3
    assert m.frame["speaker"].nunique() == 2
    assert set(m.frame["label"]) == {"angry", "fear", "happy", "neutral", "sad", "surprise"}
    assert (m.frame["sample_rate"] == 16000).all()


def test_modma_layout_with_numeric_ids_in_xlsx(tiny_modma):
    table = pd.read_excel(tiny_modma / "subjects_information_audio_lanzhou_2015.xlsx")
    assert pd.api.types.is_numeric_dtype(table["subject id"])  # leading zero lost, as in MODMA
    m = build_manifest("modma", tiny_modma)
    assert m.frame["speaker"].str.fullmatch(r"\d{8}").all()
    assert m.frame.groupby("speaker")["label"].nunique().max() == 1  # label belongs to subject
    assert set(m.frame["label"]) == {"MDD", "HC"}
    assert (m.frame["sample_rate"] == 44100).all()
    assert not m.warnings


def test_iemocap_layout_emoevaluation_lines(tmp_path):
    root = tmp_path / "IEMOCAP"
    utts = {"Ses01F_impro01_F000": "neu", "Ses01F_impro01_M000": "exc",
            "Ses01F_impro01_F001": "fru", "Ses02M_script01_1_F002": "ang"}
    lines = {}
    for utt, label in utts.items():
        session = int(utt[3:5])
        dialog = utt.rsplit("_", 1)[0]
        write_tone(root / f"Session{session}/sentences/wav/{dialog}/{utt}.wav")
        lines.setdefault((session, dialog), []).append(
            f"[6.2901 - 8.2357]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]")
    for (session, dialog), body in lines.items():
        path = root / f"Session{session}/dialog/EmoEvaluation/{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("% header\n\n" + "\n".join(body) + "\nC-E1:\tNeutral;\t()\n")
    m = build_manifest("iemocap", root)
    got = dict(zip(m.frame["path"].map(lambda p: Path(p).stem), m.frame["label"], strict=True))
    assert got == {"Ses01F_impro01_F000": "neu", "Ses01F_impro01_M000": "hap",
                   "Ses02M_script01_1_F002": "ang"}  # exc -> hap, fru dropped
    assert m.dropped == 1
    spk = dict(zip(m.frame["path"].map(lambda p: Path(p).stem), m.frame["speaker"], strict=True))
    assert spk["Ses01F_impro01_M000"] == "Ses1M" and spk["Ses02M_script01_1_F002"] == "Ses2F"


def test_recipe_can_override_label_map_and_keep(tmp_path):
    root = tmp_path / "IEMOCAP"
    write_tone(root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav")
    ev = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    ev.parent.mkdir(parents=True)
    ev.write_text("[1.0 - 2.0]\tSes01F_impro01_F000\tfru\t[1, 2, 3]\n")
    m = build_manifest("iemocap", root, label_map={"fru": "ang"}, keep=["ang"])
    assert list(m.frame["label"]) == ["ang"]


def test_ravdess_codes_and_audio_only_filter(tmp_path):
    root = tmp_path / "RAVDESS"
    write_tone(root / "Actor_01/03-01-05-01-02-01-01.wav", sr=48000)  # audio-only speech, angry
    write_tone(root / "Actor_02/03-01-01-01-01-01-02.wav", sr=48000)  # neutral, actor 2
    write_tone(root / "Actor_01/01-01-05-01-02-01-01.wav", sr=48000)  # audio-video: not kept
    write_tone(root / "Actor_01/03-02-05-01-02-01-01.wav", sr=48000)  # song: not kept
    m = build_manifest("ravdess", root)
    assert sorted(zip(m.frame["speaker"], m.frame["label"])) == [("01", "angry"), ("02", "neutral")]


def test_emodb_letter_codes(tmp_path):
    root = tmp_path / "emodb"
    write_tone(root / "wav/03a01Wa.wav")
    write_tone(root / "wav/16b10Tb.wav")
    m = build_manifest("emodb", root)
    assert sorted(zip(m.frame["speaker"], m.frame["label"])) == [("03", "anger"), ("16", "sadness")]


def test_daic_woz_split_csvs(tmp_path):
    root = tmp_path / "daic"
    for pid in (300, 301, 302):
        write_tone(root / f"{pid}_P/{pid}_AUDIO.wav", seconds=2.0)
        (root / f"{pid}_P/{pid}_TRANSCRIPT.csv").write_text(
            "start_time\tstop_time\tspeaker\tvalue\n0.1\t0.5\tEllie\thi\n0.6\t1.8\tParticipant\tyes\n")
    (root / "train_split_Depression_AVEC2017.csv").write_text(
        "Participant_ID,PHQ8_Binary,PHQ8_Score,Gender\n300,0,2,1\n301,1,15,0\n")
    (root / "dev_split_Depression_AVEC2017.csv").write_text(
        "Participant_ID,PHQ8_Binary,PHQ8_Score,Gender\n302,1,12,1\n")
    m = build_manifest("daic_woz", root)
    assert dict(zip(m.frame["speaker"], m.frame["label"], strict=True)) == {
        "300": "HC", "301": "MDD", "302": "MDD"}


# --- bad input -------------------------------------------------------------------------


def test_missing_root_names_both_ways(monkeypatch):
    monkeypatch.delenv("CASIA_ROOT", raising=False)
    with pytest.raises(UserError, match=r"recipe.*CASIA_ROOT"):
        build_manifest("casia", None)


def test_root_from_environment(monkeypatch, tiny_casia):
    monkeypatch.setenv("CASIA_ROOT", str(tiny_casia))
    assert len(build_manifest("casia", None).frame) == 36


def test_root_that_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_manifest("casia", tmp_path / "nope")


def test_no_audio_says_what_was_searched(tmp_path):
    with pytest.raises(UserError, match=r"no audio found.*\*/\*/\*\.wav"):
        build_manifest("casia", tmp_path)


def _casia_tree(root: Path, n: int = 20) -> None:
    for i in range(n):
        write_tone(root / f"spk{i % 2}" / "angry" / f"{i}.wav")


def test_bad_files_listed_skipped_and_counted(tmp_path):
    _casia_tree(tmp_path, 20)
    (tmp_path / "spk0/angry/empty.wav").write_bytes(b"")
    m = build_manifest("casia", tmp_path, max_bad_share=0.1)
    assert len(m.frame) == 20
    assert m.skipped == [("spk0/angry/empty.wav", "empty file (0 bytes)")]


def test_too_many_bad_files_fail_the_step(tmp_path):
    _casia_tree(tmp_path, 4)
    (tmp_path / "spk0/angry/empty.wav").write_bytes(b"")
    (tmp_path / "spk0/angry/garbage.wav").write_bytes(b"RIFF not really a wav file")
    write_tone(tmp_path / "spk1/angry/zero.wav", seconds=0.0)
    with pytest.raises(UserError) as err:
        build_manifest("casia", tmp_path, max_bad_share=0.2)
    msg = str(err.value)
    assert "3 of 7" in msg and "garbage.wav: unreadable" in msg
    assert "zero.wav: zero-length" in msg and "empty.wav: empty" in msg


def test_label_not_in_card_names_file_label_and_allowed(tmp_path):
    write_tone(tmp_path / "spk0/bored/1.wav")
    with pytest.raises(UserError, match=r"spk0/bored/1\.wav.*'bored'.*angry"):
        build_manifest("casia", tmp_path)


def test_table_and_audio_mismatch_warns_with_counts(tiny_modma, tmp_path):
    import shutil

    root = tmp_path / "modma"
    shutil.copytree(tiny_modma, root)
    subjects = sorted(p.name for p in root.iterdir() if p.is_dir())
    shutil.rmtree(root / subjects[0])  # a table row without audio
    write_tone(root / "09999999/01.wav")  # audio without a table row
    m = build_manifest("modma", root)
    text = " ".join(m.warnings)
    assert "1 subject(s) in the label table have no audio" in text
    assert "audio file(s) have no row in the label table" in text
    assert "09999999" not in set(m.frame["speaker"])


def test_unknown_card_key_is_an_error(tmp_path):
    card = tmp_path / "mine.toml"
    card.write_text('name = "mine"\nsample_rate = 16000\n[audio]\nglob = "*.wav"\n'
                    'pattern = "x"\npatern = "typo"\n[labels]\nnames = ["a"]\n')
    with pytest.raises(UserError, match=r"unknown key.*patern.*allowed"):
        load_card(card)


def test_prepare_cli_json_and_clear_errors(tiny_casia):
    env = {**os.environ, "CASIA_ROOT": str(tiny_casia)}
    out = subprocess.run([sys.executable, "-m", "transfer.prepare", "--corpus", "casia", "--json"],
                         capture_output=True, text=True, env=env, check=True)
    summary = json.loads(out.stdout)
    assert summary["files"] == 36 and summary["speakers"] == 2
    assert summary["labels"] == {e: 6 for e in ["angry", "fear", "happy", "neutral", "sad",
                                                "surprise"]}
    assert summary["segments"] == 36 and summary["feature_shape"] == [39, 188]
    assert summary["skipped"] == 0 and {"cache_hit", "seconds"} <= set(summary)
    env.pop("CASIA_ROOT")
    bad = subprocess.run([sys.executable, "-m", "transfer.prepare", "--corpus", "casia"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "CASIA_ROOT" in bad.stderr


@pytest.mark.skipif(not os.environ.get("CASIA_ROOT"), reason="real CASIA: set CASIA_ROOT")
def test_real_casia():
    m = build_manifest("casia", os.environ["CASIA_ROOT"])
    assert len(m.frame) == 1200 and m.frame["speaker"].nunique() == 4
    assert (m.frame["label"].value_counts() == 200).all() and not m.skipped
