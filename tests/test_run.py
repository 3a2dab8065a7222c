"""End to end: every strategy on the tiny synthetic pair writes the expected files and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_recipe, tiny_unlabelled_recipe

import transfer.train.strategies as strategies
from transfer.grid.recipe import load_recipe
from transfer.run import run_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", strategies.names())
def test_each_strategy_end_to_end(tmp_path, name):
    # a strategy that classifies with the source's head runs on the unlabelled same-label pair
    labelled = strategies.get_strategy(name).target_labels != "none"
    make = tiny_recipe if labelled else tiny_unlabelled_recipe
    recipe = load_recipe(make(tmp_path / "r.toml", [name]))
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    assert failed == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert {"unit_uar", "segment_auc", "unit_sens"} <= set(records[0]["metrics"])
    assert records[0]["unit"] == ("subject" if labelled else "recording")
    assert records[0]["units"]["y"]  # per-unit outputs
    assert len(records[0]["units"]["id"]) == len(records[0]["units"]["prob"])
    assert {"gap_mmd", "gap_a_distance"} <= set(records[0]["gap"])
    assert records[0]["best_epoch"] >= 1 and records[0]["curves"][0]["epoch"] == 1
    assert records[0]["val_units"]["id"] and records[0]["calibration"]["n"] > 0  # for the report
    covariates = {"gender", "age"} if labelled else set()  # the modma card's; emodb has none
    assert set(records[0]["units"].get("covariates", {})) == covariates
    for f in ("recipe.json", "environment.json", "table.md", "table.csv", "summary.json",
              "report.html", "calibration.csv"):
        assert (out / f).is_file(), f
    for f in ("operating_points.csv", "subgroups.csv"):  # a binary target with covariates only
        assert (out / f).is_file() == labelled, f
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {f"curves_{name}.png", f"confusion_{name}.png", f"features_{name}.png"} <= figs
    assert list(table["strategy"]) == [name]


@pytest.mark.slow
def test_table_columns_and_speaker_dependent_marking(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", ["scratch", "finetune"])
    res = subprocess.run([sys.executable, "-m", "transfer.run", str(path), "--results-dir",
                          str(tmp_path / "res"), "--quiet", "--set", "protocol.name=segment-random"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (csv,) = (tmp_path / "res").glob("tiny/*/table.csv")
    table = pd.read_csv(csv)
    for col in ("strategy", "protocol", "speaker_dependent", "runs", "failed", "unit",
                "unit_uar_mean", "unit_uar_std", "unit_uar_pooled", "unit_uar_ci_low",
                "unit_uar_ci_high", "vs_scratch_p", "vs_scratch_diff", "segment_uar_mean",
                "unit_auc_mean", "gap_mmd_mean", "gap_a_distance_mean", "source_acc"):
        assert col in table.columns, col
    assert list(table["strategy"]) == ["scratch", "finetune"]
    assert table["speaker_dependent"].all() and (table["protocol"] == "segment-random").all()
    assert "[speaker-dependent]" in csv.with_name("table.md").read_text()
    assert "speaker-dependent" in res.stdout
    env = json.loads(csv.with_name("environment.json").read_text())
    assert {"torch", "device", "git_commit", "python"} <= set(env)


def test_pretrained_model_is_cached_and_reused(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", ["freeze"]))
    from transfer.grid.experiment import Experiment

    first = Experiment(recipe, progress=False).load().pretrained
    again = Experiment(recipe, progress=False).load().pretrained
    assert again.cache_hit and again.key == first.key
    assert again.metrics == first.metrics and set(again.state) == set(first.state)
    assert all(torch.equal(again.state[k], v) for k, v in first.state.items())  # the same model
