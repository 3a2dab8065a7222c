"""Typed run records: what the grid writes reads back equal, folders of the previous version
still read, a damaged line is one line of warning, and no model ever rides in runs.jsonl."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from conftest import tiny_recipe

from transfer.evaluate.outputs import RecordError, UnitOutputs
from transfer.grid.experiment import Experiment
from transfer.grid.recipe import load_recipe
from transfer.grid.records import RunRecord, read_records, record_problem, write_record

#: Two lines of runs.jsonl written by main at 06b7b51, before records were typed (the tiny pair,
#: scratch with --export; the first has the features' PCA projection).
OLD_LINES = Path(__file__).parent / "data" / "runs_06b7b51.jsonl"


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True)  # NaN-safe equality of two records' contents


@pytest.fixture(scope="module")
def grid_results(tmp_path_factory):
    """The results of one exported pack of the tiny pair, as the grid hands them to the
    executors, and the runs.jsonl they were written to."""
    tmp = tmp_path_factory.mktemp("records")
    recipe = load_recipe(tiny_recipe(tmp / "r.toml", ["scratch"]))
    recipe.export = True
    exp = Experiment(recipe, progress=False).load()
    (pack,) = exp.packs(exp.plan())
    results = exp.execute_pack(pack)
    path = tmp / "res" / "runs.jsonl"
    path.parent.mkdir()
    for res in results:
        write_record(path, res.record, res.package)
    return results, path


def test_a_record_written_by_the_grid_reads_back_equal(grid_results):
    results, path = grid_results
    records = read_records(path)
    assert len(records) == len(results) == 2
    for res, back in zip(results, records, strict=True):
        assert back.ok and back.units is not None and back.calibration is not None
        assert back.gap is not None and back.curves and back.curves[0].epoch == 1
        assert _canonical(back.to_dict()) == _canonical(res.record.to_dict())
        # the typed fields themselves, not only their serialisation
        assert (back.units, back.val_units, back.curves, back.confusion, back.calibration) == (
            res.record.units, res.record.val_units, res.record.curves, res.record.confusion,
            res.record.calibration)
        assert back.metric("unit_uar") == res.record.metric("unit_uar")


def test_no_model_reaches_runs_jsonl(grid_results):
    results, path = grid_results
    assert all(res.package is not None for res in results)  # --export: a package beside each
    for line in path.read_text().splitlines():
        data = json.loads(line)
        assert "_model" not in data and "state" not in data and "package" not in data
        assert data["model"].startswith("models/runs/")  # the record names the file
        assert (path.parent / data["model"]).is_file()
    assert len(path.read_text()) < 50_000  # weights would be megabytes


def test_lines_written_by_the_previous_version_read_and_rewrite_unchanged():
    lines = OLD_LINES.read_text().splitlines()
    records = read_records(OLD_LINES)
    assert len(records) == len(lines) == 2
    for line, record in zip(lines, records, strict=True):
        assert _canonical(record.to_dict()) == _canonical(json.loads(line))
    first = records[0]
    assert first.strategy == "scratch" and first.unit == "subject" and first.positive == "MDD"
    assert first.gap.projection and first.units.covariates and first.val_units.id
    assert first.curves[0].terms == {"ce": first.curves[0].loss}  # the strategy's own term


def test_a_failed_record_of_the_previous_version_reads():
    line = {"key": "k", "strategy": "dann", "strategy_name": "dann", "fold": 1, "seed": 0,
            "protocol": "subject-kfold", "speaker_dependent": False, "unit": "subject",
            "uses_source": True, "labels": ["HC", "MDD"], "sizes": {"train": 4, "val": 2,
                                                                      "test": 2},
            "pack": 2, "positive": "MDD", "draw": 0, "hparams": {}, "adapt": "none",
            "status": "failed", "seconds": 1.5, "error": "FloatingPointError: diverged",
            "traceback": "", "best_epoch": 0, "epochs_run": 3, "stopped": "diverged"}
    record = RunRecord.from_dict(line)
    assert not record.ok and record.epochs_run == 3 and record.metrics == {}
    assert _canonical(record.to_dict()) == _canonical(line)


def test_records_from_before_decision_units_are_converted():
    old = {"key": "k", "status": "ok", "strategy": "scratch", "fold": 0, "seed": 0,
           "protocol": "subject-kfold", "speaker_dependent": False,
           "metrics": {"subject_uar": 0.75, "segment_uar": 0.6}, "curves": [], "confusion": [],
           "best_epoch": 1}
    record = RunRecord.from_dict(old)
    assert record.unit == "subject"
    assert record.metric("unit_uar") == 0.75 and record.metric("segment_uar") == 0.6
    assert math.isnan(record.metric("unit_auc"))


GOOD = {"key": "abc", "status": "ok", "strategy": "scratch", "fold": 0, "seed": 0,
        "protocol": "subject-kfold", "speaker_dependent": False, "metrics": {"unit_uar": 0.5},
        "curves": [{"epoch": 1, "loss": 0.7}], "confusion": [], "best_epoch": 1}


@pytest.mark.parametrize(("change", "reason"), [
    ({"fold": "0"}, "its 'fold' is str, not int"),
    ({"speaker_dependent": 1}, "its 'speaker_dependent' is int, not bool"),
    ({"metrics": {"unit_uar": "high"}}, "its 'metrics' are not all numbers"),
    ({"units": {"id": ["a"], "y": [0]}}, "it lacks 'units.prob'"),
    ({"units": {"id": ["a", "b"], "y": [0], "prob": [[0.5, 0.5]]}}, "differ in length"),
    ({"curves": [{"epoch": 1.5}]}, "its 'curves.epoch' is float, not int"),
    ({"calibration": {"temperature": 1.0, "n": 2, "before": {}}}, "calibration.before"),
    ({"status": "done"}, "its status is 'done'"),
])
def test_a_malformed_record_is_one_line_naming_the_field(tmp_path, caplog, change, reason):
    with pytest.raises(RecordError) as err:
        RunRecord.from_dict({**GOOD, **change})
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert record_problem({**GOOD, **change}) == str(err.value)
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({**GOOD, **change}) + "\n" + json.dumps(GOOD) + "\n")
    with caplog.at_level(logging.WARNING):
        assert [r.key for r in read_records(path)] == ["abc"]
    (message,) = [r.getMessage() for r in caplog.records if "not a run record" in r.getMessage()]
    assert "line 1" in message and reason in message and "\n" not in message


def test_a_missing_ok_field_is_named():
    bad = {k: v for k, v in GOOD.items() if k != "confusion"}
    assert record_problem(bad) == "it lacks 'confusion'"
    assert record_problem({**bad, "status": "failed"}) == ""  # a failed run needs no results


def test_unit_outputs_keep_only_what_was_set():
    units = UnitOutputs(["a"], [1], [[0.2, 0.8]])
    assert units.to_dict() == {"id": ["a"], "y": [1], "prob": [[0.2, 0.8]]}
    assert UnitOutputs.from_dict(units.to_dict()) == units
