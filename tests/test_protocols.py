"""No subject is in two of train/validation/test, except in the speaker-dependent protocol."""

from __future__ import annotations

import numpy as np
import pytest

from transfer import UserError
from transfer.common.config import ProtocolConfig
from transfer.evaluate.metrics import evaluate, unit_level, unit_outputs
from transfer.evaluate.protocols import SPEAKER_DEPENDENT, make_splits


def _data(n_subjects: int = 12, per: int = 5):
    groups = np.repeat([f"s{i:02d}" for i in range(n_subjects)], per)
    y = np.repeat(np.arange(n_subjects) % 2, per)
    return groups, y


@pytest.mark.parametrize("name", ["subject-kfold", "loso"])
def test_no_subject_in_two_parts(name):
    groups, y = _data()
    splits = make_splits(ProtocolConfig(name=name, folds=3), groups, y, [0, 1])
    assert len(splits) == (3 if name == "subject-kfold" else 12) * 2
    tested = {}
    for s in splits:
        parts = [set(groups[s.train]), set(groups[s.val]), set(groups[s.test])]
        assert all(parts)
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(s.train) + len(s.val) + len(s.test) == len(y)
        for g in parts[2]:
            tested.setdefault(s.seed, []).append(g)
    for seed_tested in tested.values():  # every subject is tested exactly once per seed
        assert sorted(seed_tested) == sorted(set(groups))


def test_subject_kfold_is_stratified_and_seeded():
    groups, y = _data(20)
    a = make_splits(ProtocolConfig(folds=5), groups, y, [0])
    b = make_splits(ProtocolConfig(folds=5), groups, y, [0])
    c = make_splits(ProtocolConfig(folds=5), groups, y, [1])
    assert all((x.test == z.test).all() for x, z in zip(a, b))
    assert any((x.test != z.test).any() for x, z in zip(a, c) if len(x.test) == len(z.test))
    for s in a:
        assert len(set(y[s.test])) == 2


def test_segment_random_is_the_research_split_and_leaks():
    groups, y = _data()
    splits = make_splits(ProtocolConfig(name="segment-random"), groups, y, [0, 1])
    assert "segment-random" in SPEAKER_DEPENDENT
    s = splits[0]
    assert (len(s.train), len(s.val), len(s.test)) == (36, 12, 12)
    assert set(groups[s.train]) & set(groups[s.test])  # the leak it reproduces
    assert (splits[1].test == s.test).all()  # seed 34 split, fixed across training seeds


def test_too_few_subjects_is_a_clear_error():
    groups, y = _data(6)
    with pytest.raises(UserError, match="at least 5 subjects per class"):
        make_splits(ProtocolConfig(folds=5), groups, y, [0])


def test_unit_level_metrics_use_mean_probability():
    y = np.array([1, 1, 1, 0, 0])
    groups = np.array(["a", "a", "a", "b", "b"])
    prob = np.array([[0.4, 0.6], [0.9, 0.1], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4]])
    ids, uy, up = unit_level(y, prob, groups)
    assert ids.tolist() == ["a", "b"] and uy.tolist() == [1, 0]
    np.testing.assert_allclose(up[0], [1.6 / 3, 1.4 / 3])
    m = evaluate(y, prob, groups, positive=1)
    assert m["segment_acc"] == pytest.approx(0.8) and m["unit_acc"] == 0.5
    assert m["unit_sens"] == 0.0 and m["unit_spec"] == 1.0
    assert m["segment_sens"] == pytest.approx(2 / 3)
    out = unit_outputs(y, prob, groups)
    assert out["id"] == ["a", "b"] and out["y"] == [1, 0] and len(out["prob"][0]) == 2
