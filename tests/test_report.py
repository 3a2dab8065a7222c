"""The report a reviewer and a clinician read: subgroups, calibration, operating points,
EmoBox-compatible outputs, TensorBoard logs and report.html in a real browser.

Known answers: the synthetic MODMA-like corpus has a designed gender gap and no age effect
(``transfer/data/synth.py``), and the subgroup report must find the one and not the other; a
deliberately over-confident model has a larger calibration error than after temperature
scaling fitted on validation data; a threshold chosen on validation units moves with no test
label.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_record
from sklearn.linear_model import LogisticRegression

from transfer import UserError
from transfer.common.config import ProtocolConfig
from transfer.data.cards import load_card, parse_card
from transfer.data.covariates import read_covariates
from transfer.evaluate.calibration import (
    brier,
    calibration_summary,
    ece,
    fit_temperature,
    reliability,
    run_calibration,
)
from transfer.evaluate.operating import choose_threshold, operating_point, record_threshold
from transfer.evaluate.protocols import make_splits
from transfer.evaluate.subgroups import subgroup_table
from transfer.grid.records import RunRecord
from transfer.report.sections import subgroups_markdown

ROOT = Path(__file__).resolve().parents[1]


# --- subgroups: the designed gender gap of the synthetic corpus ------------------------------
@pytest.fixture(scope="module")
def gap_corpus(tmp_path_factory) -> Path:
    """A MODMA-like corpus large enough to see a subgroup gap (160 subjects, short audio)."""
    from transfer.data.synth import make_modma

    size = {"subjects": 160, "mdd": 80, "recordings": 3, "seconds": (0.6, 0.9)}
    return make_modma(tmp_path_factory.mktemp("gap"), size, seed=0)


def _latent_records(root: Path, folds: int = 5, seeds: tuple[int, ...] = (0, 1, 2)
                    ) -> list[RunRecord]:
    """Run records of a model that reads the designed prosodic factor: per (fold, seed) a
    logistic regression on each subject's mean latent arousal (``latents.csv``), fitted on the
    fold's training subjects; covariates from the corpus card, as a run stores them."""
    lat = pd.read_csv(root / "latents.csv", dtype={"speaker": str})
    per = lat.groupby("speaker").agg(a=("arousal", "mean"), label=("label", "first"))
    covs = read_covariates(load_card("modma"), root).table.reindex(per.index)
    labels = ["MDD", "HC"]  # the card's order: MDD is class 0
    y = (per["label"] == "HC").to_numpy(int)
    x = per[["a"]].to_numpy()
    ids = per.index.to_numpy(str)
    records = []
    for split in make_splits(ProtocolConfig(folds=folds), ids, y, list(seeds)):
        model = LogisticRegression().fit(x[split.train], y[split.train])

        def outputs(idx: np.ndarray, model=model) -> dict:
            return {"id": ids[idx].tolist(), "y": y[idx].tolist(),
                    "prob": model.predict_proba(x[idx]).round(4).tolist()}

        units = outputs(split.test)
        units["covariates"] = {c: [None if pd.isna(v) else (float(v) if c == "age" else str(v))
                                   for v in covs[c].to_numpy()[split.test]] for c in covs}
        records.append(run_record(key=f"oracle-{split.fold}-{split.seed}", strategy="oracle",
                                  fold=split.fold, seed=split.seed, labels=labels,
                                  positive="MDD", units=units, val_units=outputs(split.val)))
    return records


def test_designed_gender_gap_is_found_and_no_age_gap(gap_corpus):
    table, how = subgroup_table(_latent_records(gap_corpus), ["oracle"], {"age": [40.0]})
    gender = table[table["covariate"] == "gender"].set_index("group")
    assert list(gender.index) == ["F", "M"] and gender["units"].sum() == 160
    men = gender.loc["M"]
    # designed: depression shows less in men's voices, so depressed men are missed more often
    assert men["gap_vs"] == "F" and men["sens_gap_high"] < 0, men  # the interval excludes 0
    assert men["sens_gap"] < -0.15 and men["sens_gap_pairs"] == 15 and men["sens_gap_p"] < 0.05
    assert men["sens"] == pytest.approx(men["sens_gap"] + gender.loc["F", "sens"])
    assert men["uar_gap"] < 0
    age = table[table["covariate"] == "age"].set_index("group")
    assert list(age.index) == ["<40", "≥40"]
    older = age.loc["≥40"]
    assert older["sens_gap_low"] < 0 < older["sens_gap_high"]  # no age effect was designed
    assert how == {"age": "bands from the recipe"}
    text = subgroups_markdown(table, how, [], "subject", "MDD")
    assert "by gender" in text and "sens (MDD) gap vs F" in text


def test_covariates_from_cards_and_why_none(tmp_path, tiny_modma):
    table = read_covariates(load_card("modma"), tiny_modma).table
    assert list(table.columns) == ["gender", "age"] and len(table) == 8
    assert set(table["gender"]) == {"F", "M"} and table["age"].dtype == float
    # DAIC-WOZ codes its gender 0/1: the card names them
    (tmp_path / "train_split_Depression_AVEC2017.csv").write_text(
        "Participant_ID,PHQ8_Binary,PHQ8_Score,Gender\n303,0,0,0\n304,1,12,1\n")
    daic = read_covariates(load_card("daic_woz"), tmp_path).table
    assert daic.loc["303", "gender"] == "female" and daic.loc["304", "gender"] == "male"
    # a card without covariates: none, and a note that says why
    casia = read_covariates(load_card("casia"), tmp_path)
    assert casia.table is None and "no subject table" in casia.note
    note = subgroups_markdown(pd.DataFrame(), {}, [run_record(covariates_note=casia.note)],
                              "subject", "MDD")
    assert note.startswith("No subgroups: corpus 'casia' has no subject table")
    base = {"name": "c", "sample_rate": 16000,
            "audio": {"glob": "*/*.wav", "pattern": r"^(?P<speaker>\w+)/(?P<label>\w+)\.wav$"},
            "labels": {"names": ["a", "b"]}}
    with pytest.raises(UserError, match=r"\[covariates\] are columns of a subject table"):
        parse_card({**base, "covariates": {"gender": "g"}})
    table_labels = {"names": ["a"], "source": "table", "files": ["t.csv"], "key_column": "id",
                    "label_column": "y"}
    with pytest.raises(UserError, match="kind must be 'category' or 'number'"):
        parse_card({**base, "labels": table_labels, "covariates": {"age": {"column": "age",
                                                                           "kind": "years"}}})


# --- operating points -------------------------------------------------------------------------
def test_threshold_known_answers():
    y = np.array([0, 0, 1, 0, 1, 1], bool)
    score = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    # J = 2/3 at 0.7 (tpr 2/3, fpr 0) and at 0.3 (tpr 1, fpr 1/3): the higher one
    assert choose_threshold(y, score, "youden").value == pytest.approx(0.7)
    assert choose_threshold(y, score, "specificity", 0.8).value == pytest.approx(0.7)
    assert choose_threshold(y, score, "specificity", 0.6).value == pytest.approx(0.3)
    one_class = choose_threshold(np.ones(4, bool), np.linspace(0.2, 0.8, 4))
    assert one_class.value == 0.5 and one_class.fallback


def _random_records(n_runs: int = 6, seed: int = 0) -> list[RunRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_runs):
        def units(n: int, tag: str, k: int = k) -> dict:
            y = rng.integers(0, 2, n)
            p1 = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, n), 0.01, 0.99)
            return {"id": [f"{tag}{k}-{i}" for i in range(n)], "y": y.tolist(),
                    "prob": np.stack([1 - p1, p1], 1).round(4).tolist()}

        out.append(run_record(key=f"r{k}", strategy="s", fold=k, labels=["HC", "MDD"],
                              positive="MDD", units=units(12, "t"), val_units=units(10, "v")))
    return out


@pytest.mark.parametrize("rule", ["youden", "specificity"])
def test_changing_only_test_labels_changes_no_threshold(rule):
    records = _random_records()
    before = [record_threshold(r, rule, 0.8).value for r in records]
    point = operating_point(records, rule, 0.8)
    for r in records:  # every test label flipped
        r.units.y[:] = [1 - v for v in r.units.y]
    assert [record_threshold(r, rule, 0.8).value for r in records] == before
    flipped = operating_point(records, rule, 0.8)
    assert flipped.threshold_mean == point.threshold_mean
    assert flipped.sens.point != point.sens.point  # the test labels do reach the scores
    for r in records:  # the validation labels, by contrast, choose the threshold
        r.val_units.y[:] = [1 - v for v in r.val_units.y]
    assert [record_threshold(r, rule, 0.8).value for r in records] != before


# --- calibration ------------------------------------------------------------------------------
def _overconfident(n: int, seed: int, sharpen: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities, and the probabilities of a model whose
    logits are ``sharpen`` times too large."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    p1 = 1 / (1 + np.exp(-sharpen * z))
    return np.stack([1 - p1, p1], 1), y


def test_temperature_scaling_fitted_on_validation_lowers_the_overconfident_ece():
    val_p, val_y = _overconfident(3000, 0)
    test_p, test_y = _overconfident(3000, 1)
    t = fit_temperature(val_p, val_y)
    assert 3.0 < t < 5.5  # the logits were 4x too large
    record, scaled = run_calibration(val_p, val_y, test_p, test_y, positive=1)
    before, after = ece(record["before"]), ece(record["after"])
    assert before > 0.08 and after < before / 3
    assert brier(scaled, test_y, 1) < brier(test_p, test_y, 1)
    assert (scaled.argmax(1) == test_p.argmax(1)).all()  # no decision changes
    # the test labels only count: the temperature comes from the validation data alone
    other, _ = run_calibration(val_p, val_y, test_p, 1 - test_y, positive=1)
    assert other["temperature"] == record["temperature"]
    right = val_p.argmax(1) == val_y  # every validation prediction right: no best T exists
    assert fit_temperature(val_p[right], val_y[right]) == 1.0
    calibrated_p, calibrated_y = _overconfident(3000, 2, sharpen=1.0)
    assert ece(reliability(calibrated_p, calibrated_y)) < 0.03
    # pooled over runs, as the report shows it
    runs = [run_record(calibration=record,
                       units={"id": [str(i) for i in range(200)], "y": test_y[:200].tolist(),
                              "prob": test_p[:200].tolist(), "prob_ts": scaled[:200].tolist()})]
    summary = calibration_summary(runs, positive=1)
    assert summary["segment_ece_after"] < summary["segment_ece_before"]
    assert summary["unit_ece_after"] < summary["unit_ece_before"]
    assert summary["temperature_mean"] == pytest.approx(record["temperature"])


# --- a whole results folder: EmoBox outputs, TensorBoard, report.html ------------------------
DEMO_TINY = ["source.synthetic=tiny", "target.synthetic=tiny", "source.segments.seconds=2.0",
             "target.segments.seconds=2.0", "target.segments.overlap_s=0.5",
             'backbone.options={filters = 8, blocks = 3, split = 1, stem = "bn"}',
             "pretrain.epochs=1", "train.epochs=1", "train.batch_size=8", "protocol.folds=2",
             "diagnostics.max_samples=50", "jobs=1", "strategies.mmd_ae.align_every=1",
             "strategies.mmd_ae.align_steps=1", "strategies.ddg.align_every=1",
             "strategies.ddg.align_steps=1"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The demo recipe (every strategy and the leak report) on the tiny synthetic pair."""
    from transfer.grid.recipe import load_recipe
    from transfer.run import run_recipe

    recipe = load_recipe(ROOT / "recipes" / "demo.toml", DEMO_TINY)
    out, _, failed = run_recipe(recipe, results_dir=tmp_path_factory.mktemp("demo"),
                                progress=False)
    assert failed == 0
    return out


SECTIONS = ["comparison", "operating-points", "calibration", "subgroups", "leak-report",
            "emobox", "figures", "recipe", "environment"]


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.mark.slow
def test_report_html_renders_in_chromium(demo_dir, tmp_path):
    page = demo_dir / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # no network, no CDN
    assert text.count('src="data:image/png;base64,') >= 7 * 3 + 3  # every figure inlined
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "page.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,4000",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280) and pixels.std() > 0.05  # drawn, not blank
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    from transfer.grid.recipe import load_recipe

    strategies = [e.label for e in load_recipe(ROOT / "recipes" / "demo.toml").strategies]
    comparison = dom.split('<section id="comparison">')[1].split("</section>")[0]
    for name in strategies:
        assert f"<td>{name}</td>" in comparison, name
        for section in ("operating-points", "calibration", "subgroups"):
            part = dom.split(f'<section id="{section}">')[1].split("</section>")[0]
            assert f"<td>{name}</td>" in part, (section, name)
    assert "subject sens (positive: MDD)" in comparison


def test_emobox_predictions_match_the_records(demo_dir):
    from transfer.grid.records import read_records

    records = [r for r in read_records(demo_dir / "runs.jsonl")
               if r.protocol == "subject-kfold"]
    scores = pd.read_csv(demo_dir / "predictions" / "scores.csv")
    assert len(scores) == len(records) == 14
    label_map = json.loads((demo_dir / "predictions" / "label_map.json").read_text())
    assert label_map == {name: i for i, name in enumerate(records[0].labels)}
    for r in records:
        tag = f"fold{r.fold}-seed{r.seed}"
        preds = [json.loads(line) for line in
                 (demo_dir / "predictions" / f"{r.strategy}-{tag}.jsonl").open()]
        assert [p["key"] for p in preds] == r.units.id
        assert [p["pred"] for p in preds] == np.argmax(r.units.prob, 1).tolist()
        row = scores[(scores["strategy"] == r.strategy) & (scores["fold"] == r.fold)]
        assert row["UA"].item() == pytest.approx(r.metrics["unit_uar"])
        assert row["WA"].item() == pytest.approx(r.metrics["unit_acc"])
        assert row["macro-F1"].item() == pytest.approx(r.metrics["unit_f1"])


def test_report_rebuild_with_other_report_settings(demo_dir, tmp_path):
    from transfer.report.tables import main

    copy = tmp_path / "copy"
    shutil.copytree(demo_dir, copy)
    assert main([str(copy), "--no-plots", "--set", "report.threshold=specificity",
                 "--set", "report.specificity=0.9"]) == 0
    ops = pd.read_csv(copy / "operating_points.csv")
    assert (ops["rule"] == "specificity").all() and len(ops) == 7
    assert "reaches 0.9" in (copy / "report.html").read_text(encoding="utf-8")
    assert main([str(copy), "--set", "train.epochs=3"]) == 2  # the runs are done


def test_emobox_leave_one_speaker_out_folds(tiny_casia, tmp_path):
    from transfer.common.config import CorpusConfig, FeatureSpec, SegmentsConfig
    from transfer.data.domain import load_domain
    from transfer.inspect import main

    assert main(["folds", "--corpus", "casia", "--root", str(tiny_casia), "--out",
                 str(tmp_path)]) == 0
    base = tmp_path / "casia"
    speakers = sorted(p.name for p in tiny_casia.iterdir() if p.is_dir())
    seen = set()
    for n, speaker in enumerate(speakers, 1):
        test = [json.loads(x) for x in (base / f"fold_{n}" / f"casia_test_fold_{n}.jsonl").open()]
        train = [json.loads(x) for x in (base / f"fold_{n}" / f"casia_train_fold_{n}.jsonl").open()]
        assert {e["key"].split("/")[0] for e in test} == {speaker}
        assert speaker not in {e["key"].split("/")[0] for e in train}
        assert {"key", "dataset", "wav", "type", "sample_rate", "length", "emo",
                "channel"} <= set(test[0])
        seen |= {e["key"] for e in test}
    # the keys are the toolkit's own recording ids: a recording-level run names its units so
    domain = load_domain([CorpusConfig(corpus="casia", root=str(tiny_casia), unit="recording",
                                       segments=SegmentsConfig(seconds=2.0, mode="pad"))],
                         FeatureSpec(), progress=False)
    assert seen == set(domain.unit_ids.tolist())


# --- TensorBoard (optional extra) --------------------------------------------------------------
def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from transfer.report.tensorboard import write_tensorboard

    curves = [{"epoch": e, "loss": 1.0 / e, "align_mmd": 0.5 / e, "val_uar": 0.5 + 0.1 * e}
              for e in (1, 2, 3)]
    record = run_record(strategy="ddg", fold=1, curves=curves)
    (run_dir,) = write_tensorboard(tmp_path, [record, dataclasses.replace(record,
                                                                          status="failed")])
    assert run_dir == tmp_path / "ddg" / "subject-kfold" / "fold1-seed0"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/align_mmd", "val/uar"}
    uar = events.Scalars("val/uar")
    assert [e.step for e in uar] == [1, 2, 3]
    assert [e.value for e in uar] == pytest.approx([0.6, 0.7, 0.8])


def test_tensorboard_without_the_extra_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from conftest import tiny_recipe

    from transfer.run import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--results-dir", str(tmp_path / "res"), "--quiet",
                 "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "tensorboard" in err
    assert not (tmp_path / "res").exists()  # refused before any work


def test_a_covariate_with_one_group_has_no_gap():
    records = _random_records(2)
    records = [dataclasses.replace(r, units=dataclasses.replace(
        r.units, covariates={"site": ["A"] * len(r.units.id)})) for r in records]
    table, _ = subgroup_table(records, ["s"], {})
    assert list(table["group"]) == ["A"] and not [c for c in table.columns if "gap" in c]
