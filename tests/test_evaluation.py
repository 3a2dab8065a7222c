"""Decision units, the leak report and the significance columns, on data whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_record, write_tone
from sklearn.metrics import balanced_accuracy_score

from transfer import UserError
from transfer.common.config import CorpusConfig, FeatureSpec, ProtocolConfig
from transfer.data import Domain, load_domain
from transfer.evaluate.protocols import make_splits
from transfer.evaluate.stats import paired_test, paired_uar_diff_ci, pooled_uar_ci
from transfer.grid.experiment import Experiment
from transfer.grid.recipe import load_recipe, parse_recipe
from transfer.grid.records import RunRecord
from transfer.report.tables import build_table, leak_table, markdown
from transfer.report.tables import main as report_main
from transfer.run import run_recipe

ROOT = Path(__file__).resolve().parents[1]


# --- decision units and folds ----------------------------------------------------------------
def _within_speaker(n_speakers: int = 10, recordings: int = 6, per: int = 2):
    """Every speaker has recordings of both classes (EmoDB-like); labels belong to recordings."""
    spk = np.repeat([f"{i:02d}" for i in range(n_speakers)], recordings * per)
    rec = np.repeat([f"{i:02d}/r{j}" for i in range(n_speakers) for j in range(recordings)], per)
    y = np.repeat(np.tile(np.arange(recordings) % 2, n_speakers), per)
    return spk, rec, y


@pytest.mark.parametrize("name", ["subject-kfold", "loso"])
def test_labels_varying_within_speakers_grouped_stratified_folds(name):
    spk, rec, y = _within_speaker()
    rec_label = dict(zip(rec, y))
    splits = make_splits(ProtocolConfig(name=name, folds=5), spk, y, [0, 1], units=rec,
                         kind="recording")
    assert len(splits) == (5 if name == "subject-kfold" else 10) * 2
    tested: dict[int, list[str]] = {}
    for s in splits:
        parts = [set(spk[s.train]), set(spk[s.val]), set(spk[s.test])]
        assert all(parts)
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(s.train) + len(s.val) + len(s.test) == len(y)
        assert set(y[s.test]) == {0, 1} and set(y[s.val]) == {0, 1}  # stratified, both classes
        tested.setdefault(s.seed, []).extend(np.unique(rec[s.test]).tolist())
        # no relabelling: every test segment keeps its recording's own label
        assert all(rec_label[r] == lab for r, lab in zip(rec[s.test], y[s.test]))
    for units in tested.values():  # every recording is tested exactly once per seed
        assert sorted(units) == sorted(set(rec))


def test_labels_varying_within_a_declared_subject_are_an_error():
    spk, _, y = _within_speaker(n_speakers=3)
    with pytest.raises(UserError, match=r"labels vary within 3 of 3 subjects.*00 \(neutral 6, "
                                        r"low 6\).*unit = \"recording\""):
        make_splits(ProtocolConfig(folds=2), spk, y, [0], names=["neutral", "low"])


def _tiny_corpus(root: Path, table: str, card_unit: str = "subject") -> Path:
    """Three subjects x two recordings, labels from a table keyed by recording."""
    for s in ("s1", "s2", "s3"):
        for r in ("a", "b"):
            write_tone(root / s / f"{r}.wav", seconds=0.3)
    (root / "labels.csv").write_text(table)
    card = root / "card.toml"
    card.write_text(f"""name = "tinyclinic"
sample_rate = 16000
[audio]
glob = "*/*.wav"
pattern = '^(?P<rec_id>(?P<speaker>[^/]+)/[^/]+)\\.wav$'
[labels]
source = "table"
files = ["labels.csv"]
key_column = "recording"
label_column = "group"
key_group = "rec_id"
names = ["MDD", "HC"]
unit = "{card_unit}"
""")
    return card


def test_subject_card_whose_table_contradicts_itself_is_a_clear_error(tmp_path):
    rows = "recording,group\ns1/a,MDD\ns1/b,HC\ns2/a,HC\ns2/b,HC\ns3/a,MDD\ns3/b,MDD\n"
    card = _tiny_corpus(tmp_path / "c", rows)
    cfg = CorpusConfig(corpus=str(card), root=str(tmp_path / "c"))
    with pytest.raises(UserError, match=r"corpus 'tinyclinic': labels vary within 1 of 3 "
                                        r"subjects.*s1 \(HC 1, MDD 1\)"):
        load_domain([cfg], FeatureSpec(), progress=False)
    # the same data declared per recording loads, with the recording as the unit
    cfg.unit = "recording"
    dom = load_domain([cfg], FeatureSpec(), progress=False)
    assert dom.unit == "recording" and sorted(set(dom.unit_ids)) == [
        "s1/a.wav", "s1/b.wav", "s2/a.wav", "s2/b.wav", "s3/a.wav", "s3/b.wav"]
    # a key listed twice with different labels is named, not silently overwritten
    (tmp_path / "c" / "labels.csv").write_text(rows + "s2/a,MDD\n")
    with pytest.raises(UserError, match=r"'s2/a' is listed twice "
                                        r"with different labels: .*'HC'.*'MDD'"):
        load_domain([cfg], FeatureSpec(), progress=False)


def test_concat_segments_need_subject_labels(tmp_path):
    rows = "recording,group\ns1/a,MDD\ns1/b,HC\ns2/a,HC\ns2/b,HC\ns3/a,MDD\ns3/b,MDD\n"
    card = _tiny_corpus(tmp_path / "c", rows, card_unit="recording")
    cfg = CorpusConfig(corpus=str(card), root=str(tmp_path / "c"))
    cfg.segments.mode = "concat"
    with pytest.raises(UserError, match="'concat' joins a subject's recordings"):
        load_domain([cfg], FeatureSpec(), progress=False)


def _emodb_like(root: Path, speakers: int = 6) -> Path:
    """EmoDB's layout (wav/SSTTTEV.wav): every speaker reads texts bored, sad and neutral."""
    for i in range(speakers):
        for t, text in enumerate(("a01", "a02")):
            for emotion, freq in (("L", 150.0), ("T", 170.0), ("N", 260.0)):
                write_tone(root / "wav" / f"{i + 3:02d}{text}{emotion}a.wav", seconds=0.6,
                           freq=freq * (1 + 0.05 * i + 0.01 * t))
    return root


@pytest.mark.slow
def test_emodb_style_target_runs_with_recording_level_table(tmp_path):
    root = _emodb_like(tmp_path / "emodb")
    recipe = parse_recipe({
        "name": "emodb_low_affect", "seeds": [0],
        "target": {"corpus": "emodb", "root": str(root), "keep": ["low", "neutral"],
                   "label_map": {"boredom": "low", "sadness": "low"}, "positive": "low",
                   "segments": {"seconds": 0.3, "mode": "window", "overlap_s": 0.0}},
        "backbone": {"options": {"filters": 4, "blocks": 2, "split": 1, "stem": "bn"}},
        "train": {"epochs": 2, "batch_size": 8, "amp": False},
        "protocol": {"folds": 3}, "diagnostics": {"enabled": False},
        "strategies": [{"name": "scratch"}]})
    exp = Experiment(recipe, progress=False).load()
    t = exp.target
    assert t.unit == "recording" and t.labels == ["low", "neutral"]
    for split in exp.splits.values():  # grouped: no speaker in two parts
        parts = [set(t.groups[split.train]), set(t.groups[split.val]), set(t.groups[split.test])]
        assert not parts[0] & parts[2] and not parts[1] & parts[2] and not parts[0] & parts[1]
        assert set(t.y[split.test]) == {0, 1}
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    assert failed == 0 and (table["unit"] == "recording").all()
    assert table["units_tested"].iloc[0] == 36  # 6 speakers x 2 texts x 3 emotions
    head = (out / "table.md").read_text()
    assert "recording UAR pooled [95% CI]" in head and "Decision unit: the recording" in head
    assert "recall of the positive class, low" in head


def test_shipped_emodb_recipe_is_recording_level():
    recipe = load_recipe(ROOT / "recipes" / "casia_to_emodb_low_affect.toml")
    assert recipe.target.corpus == "emodb" and recipe.protocol.name == "subject-kfold"
    assert set(recipe.target.label_map.values()) == {"low"}
    assert recipe.target.keep == ["low", "neutral"] and recipe.target.positive == "low"


# --- the leak report -------------------------------------------------------------------------
def _speaker_identity_target(n_speakers: int = 40, per: int = 4, dim: int = 64) -> Domain:
    """Each speaker is a random vector; labels are random per speaker: only identity predicts
    the label, so nothing carries over to new speakers."""
    rng = np.random.default_rng(0)
    voice = rng.standard_normal((n_speakers, dim)).astype(np.float32)
    spk_y = rng.permutation(np.arange(n_speakers) % 2)
    who = np.repeat(np.arange(n_speakers), per)
    x = voice[who][:, :, None] + 0.3 * rng.standard_normal((len(who), dim, 8)).astype(np.float32)
    groups = np.array([f"s{k:02d}" for k in who])
    files = np.char.add(groups, [f"/r{i % per // 2}.wav" for i in range(len(who))])
    return Domain("speakers", x, spk_y[who], groups, files, ["a", "b"], ["leak-test"], "b")


def test_leak_report_on_a_target_where_speaker_identity_predicts_the_label(tmp_path):
    recipe = parse_recipe({
        "name": "leak", "seeds": [0], "target": {"corpus": "modma"}, "device": "cpu",
        "backbone": {"options": {"filters": 8, "blocks": 2, "split": 1, "stem": "bn"}},
        "train": {"epochs": 6, "batch_size": 16, "lr": 0.01, "amp": False},
        "protocol": {"folds": 2, "compare": ["segment-random"]},
        "diagnostics": {"enabled": False}, "strategies": [{"name": "scratch"}]})
    exp = Experiment(recipe, progress=False)
    exp.target = _speaker_identity_target()
    exp.build_splits()
    plan = exp.plan()
    assert sorted({s.protocol for s in plan}) == ["segment-random", "subject-kfold"]
    assert len({s.key for s in plan}) == len(plan) == 3
    records = [exp.execute(s) for s in plan]
    assert all(r.ok for r in records)
    from transfer.report.tables import write_outputs

    write_outputs(tmp_path, records, ["scratch"], None, "leak", plots=False,
                  protocol="subject-kfold")
    leak = pd.read_csv(tmp_path / "leak.csv").iloc[0]
    assert leak["compared_protocol"] == "segment-random" and leak["compared_speaker_dependent"]
    assert leak["compared_unit_uar"] >= 0.85  # the leaky protocol recognises the speakers
    assert leak["honest_unit_uar"] <= 0.7  # new speakers: chance
    assert leak["unit_uar_difference"] == pytest.approx(
        leak["compared_unit_uar"] - leak["honest_unit_uar"])
    text = (tmp_path / "leak.md").read_text()
    assert "subject-kfold vs segment-random" in text and "Why they differ" in text
    table = pd.read_csv(tmp_path / "table.csv")  # the table itself stays honest
    assert (table["protocol"] == "subject-kfold").all() and table["runs"].iloc[0] == 2
    assert "see leak.md" in (tmp_path / "table.md").read_text()


def test_leak_report_flag_plans_the_leaky_protocol(tmp_path, capsys):
    from conftest import tiny_recipe

    from transfer.run import main

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--dry-run", "--leak-report"]) == 0
    out = capsys.readouterr().out
    assert "protocol subject-kfold" in out
    assert "protocol segment-random (speaker-dependent!)" in out
    assert main([str(path), "--dry-run", "--leak-report", "--set",
                 "protocol.name=segment-random"]) == 2
    assert "already protocol.name" in capsys.readouterr().err


def test_demo_recipe_writes_the_leak_report():
    recipe = load_recipe(ROOT / "recipes" / "demo.toml")
    assert recipe.protocol.compare == ["segment-random"]


# --- confidence intervals and paired tests ---------------------------------------------------
def _records(strategy: str, accuracy: float, folds: int, seeds: list[int], units: int = 20,
             protocol: str = "subject-kfold", seed: int = 0) -> list[RunRecord]:
    """Run records whose test units are predicted right with probability ``accuracy``."""
    rng = np.random.default_rng(seed)
    out = []
    for s in seeds:
        for f in range(folds):
            y = np.arange(units) % 2
            right = rng.random(units) < accuracy
            pred = np.where(right, y, 1 - y)
            prob = np.stack([1 - pred, pred], 1) * 0.8 + 0.1
            ids = [f"u{f}-{i}" for i in range(units)]
            out.append(run_record(
                key=f"{strategy}-{protocol}-{f}-{s}", strategy=strategy,
                strategy_name=strategy.split("_")[0], fold=f, seed=s, protocol=protocol,
                speaker_dependent=protocol == "segment-random", unit="subject",
                metrics={"unit_uar": balanced_accuracy_score(y, pred),
                         "segment_uar": balanced_accuracy_score(y, pred)},
                units={"id": ids, "y": y.tolist(), "prob": prob.tolist()}))
    return out


def test_bootstrap_ci_known_answers():
    perfect = pooled_uar_ci(_records("scratch", 1.0, 4, [0]))
    assert (perfect.point, perfect.low, perfect.high, perfect.units) == (1.0, 1.0, 1.0, 80)
    # exactly 3 of 4 units of each class right, in every fold and seed: UAR 0.75
    recs = _records("scratch", 1.0, 4, [0, 1], units=48)
    for r in recs:
        prob = np.array(r.units.prob)
        prob[::4] = prob[::4, ::-1]  # every 4th unit (both classes alike) wrong
        r.units.prob[:] = prob.tolist()
    ci = pooled_uar_ci(recs)
    assert ci.point == pytest.approx(0.75) and ci.seeds == 2 and ci.units == 192
    assert ci.low < 0.75 < ci.high and 0.05 < ci.high - ci.low < 0.2
    # seeds that disagree: the point is the mean over seeds of the pooled UAR of each seed
    recs = _records("scratch", 0.7, 4, [0, 1], units=50)
    per_seed = []
    for s in (0, 1):
        y = np.concatenate([r.units.y for r in recs if r.seed == s])
        p = np.concatenate([np.argmax(r.units.prob, 1) for r in recs if r.seed == s])
        per_seed.append(balanced_accuracy_score(y, p))
    assert pooled_uar_ci(recs).point == pytest.approx(np.mean(per_seed))


def test_paired_difference_interval_cancels_what_the_units_share():
    """Two strategies wrong on the same hard units, one also right on 6 more of 160: the
    separate intervals overlap, the paired interval of the difference is above 0; a strategy
    equal to the reference differs by exactly 0."""
    ref = _records("scratch", 1.0, 4, [0], units=40)
    better = _records("better", 1.0, 4, [0], units=40)
    rng = np.random.default_rng(0)
    hard = rng.permutation(160)[:50]  # wrong for both
    extra = hard[:6]  # ... except these, which "better" gets right
    for recs, wrong in ((ref, hard), (better, np.setdiff1d(hard, extra))):
        for r in recs:
            prob = np.array(r.units.prob)
            mine = [i - 40 * r.fold for i in wrong if i // 40 == r.fold]
            prob[mine] = prob[mine, ::-1]
            r.units.prob[:] = prob.tolist()
    a, b = pooled_uar_ci(better), pooled_uar_ci(ref)
    assert a.low < b.high  # side by side: overlapping error bars
    d = paired_uar_diff_ci(better, ref)
    assert d.point == pytest.approx(a.point - b.point) and d.units == 160
    assert 0 < d.low < d.point < d.high
    same = paired_uar_diff_ci(ref, ref)
    assert (same.point, same.low, same.high) == (0.0, 0.0, 0.0)
    table = build_table(ref + better, ["scratch", "better"]).set_index("strategy")
    assert table.loc["better"]["vs_scratch_diff_ci_low"] == pytest.approx(d.low)
    assert "[+0.0" in markdown(table.reset_index(), "t")


def test_constructed_better_strategy_is_significant_and_few_pairs_are_flagged(tmp_path):
    recs = (_records("scratch", 0.5, 8, [0, 1], seed=1) + _records("good", 0.95, 8, [0, 1], seed=2)
            + _records("same", 0.5, 8, [0, 1], seed=3))
    table = build_table(recs, ["scratch", "good", "same"]).set_index("strategy")
    good, same = table.loc["good"], table.loc["same"]
    assert good["vs_scratch_pairs"] == 16 and good["vs_scratch_p"] < 0.001
    assert good["vs_scratch_diff"] > 0.3
    assert good["unit_uar_ci_low"] > table.loc["scratch"]["unit_uar_ci_high"]
    assert same["vs_scratch_p"] > 0.05
    assert np.isnan(table.loc["scratch"]["vs_scratch_p"])
    # three pairs: the exact test cannot go below 2/2^3 = 0.25, and the table says so
    few = build_table(_records("scratch", 0.5, 3, [0], seed=1) + _records("good", 1.0, 3, [0]),
                      ["scratch", "good"])
    assert few.iloc[1]["vs_scratch_p"] == pytest.approx(0.25)
    assert few.iloc[1]["vs_scratch_min_p"] == pytest.approx(0.25)
    text = markdown(few, "few")
    assert "| 0.25† (n=3) |" in text and "p vs scratch" in text and "95% CI" in text
    assert paired_test(np.array([0.7]), np.array([0.5])).pairs == 1  # one pair: no p-value
    assert np.isnan(paired_test(np.array([0.7]), np.array([0.5])).p)


def test_report_rebuilds_table_and_leak_report_from_records(tmp_path):
    import json

    recs = (_records("scratch", 0.5, 4, [0]) + _records("good", 0.9, 4, [0])
            + _records("scratch", 0.9, 1, [0], protocol="segment-random")
            + _records("good", 1.0, 1, [0], protocol="segment-random"))
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
    (tmp_path / "summary.json").write_text(json.dumps(
        {"order": ["scratch", "good"], "title": "t", "protocol": "subject-kfold"}))
    assert report_main([str(tmp_path), "--no-plots"]) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    for col in ("unit_uar_pooled", "unit_uar_ci_low", "unit_uar_ci_high", "vs_scratch_p",
                "vs_scratch_diff", "vs_scratch_pairs", "unit"):
        assert col in table.columns, col
    assert (table["protocol"] == "subject-kfold").all()
    leak = leak_table(recs, ["scratch", "good"])
    assert list(leak["strategy"]) == ["scratch", "good"]
    assert leak.iloc[0]["unit_uar_difference"] > 0.2
    assert (tmp_path / "leak.md").is_file() and (tmp_path / "leak.csv").is_file()
