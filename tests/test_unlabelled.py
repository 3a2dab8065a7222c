"""The unlabelled-target mode: recipes that ask for it, hidden target labels, source-free
training, test-time adaptation's rules and code paths, label-free selection, and the two
recipes end to end on synthetic corpora in the real layouts.

The mechanisms' known answers are in ``tests/test_known_answer_unlabelled.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_record

import backbones
from transfer import UserError
from transfer.common.config import CorpusConfig, FeatureSpec, SegmentsConfig
from transfer.data import Domain, load_domain
from transfer.data.domain import speaker_zscores
from transfer.evaluate import selection
from transfer.evaluate.protocols import make_splits
from transfer.grid.recipe import load_recipe, parse_recipe
from transfer.run import run_recipe
from transfer.train.adapt import adabn, adapt_predict, batchnorm_layers
from transfer.train.pretrain import Pretrained
from transfer.train.strategies.coral import Coral

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["angry", "fear", "happy", "neutral", "sad"]
UNLABELLED = {"source": {"corpus": "casia", "keep": EMOTIONS},
              "target": {"corpus": "emodb", "labelled": False, "keep": EMOTIONS,
                         "label_map": {"anger": "angry", "happiness": "happy",
                                       "sadness": "sad"}}}


def _recipe(strategies: list[str], **sections) -> dict:
    return {**UNLABELLED, **sections, "strategies": [{"name": s} for s in strategies]}


# --- recipes ------------------------------------------------------------------------------------
def test_unlabelled_recipes_refuse_what_reads_target_labels_in_one_line():
    with pytest.raises(UserError, match=r"strategy 'scratch' trains on the target's labels.*"
                                        r"can run unlabelled: source_only, dann, coral"):
        parse_recipe(_recipe(["scratch"]))
    with pytest.raises(UserError, match=r"'ddg'.*\(its two domain-specific projectors"):
        parse_recipe(_recipe(["ddg"]))
    with pytest.raises(UserError, match=r"strategy 'shot' adapts the source's classifier.*"
                                        r"labelled = false"):
        parse_recipe({"source": {"corpus": "casia"}, "target": {"corpus": "modma"},
                      "strategies": [{"name": "shot"}]})
    with pytest.raises(UserError, match=r"'source\.labelled' must be true"):
        parse_recipe({**_recipe(["dann"]), "source": {"corpus": "casia", "labelled": False}})
    with pytest.raises(UserError) as err:
        parse_recipe(_recipe(["freeze"]))
    assert "\n" not in str(err.value)  # one line


def test_unlabelled_recipes_keep_the_last_epoch_and_select_without_labels():
    r = parse_recipe(_recipe(["dann", "shot"]))
    assert r.train.select == "last" and not r.target.labelled
    with pytest.raises(UserError, match=r"'train\.select' must be \"last\".*validation labels"):
        parse_recipe(_recipe(["dann"], train={"select": "val_uar"}))
    with pytest.raises(UserError, match=r"'sweep\.select' must be a label-free rule"):
        parse_recipe(_recipe(["dann"], sweep={"draws": 2}))
    assert parse_recipe(_recipe(["dann"], sweep={"draws": 2, "select": "snd"})).sweep.select == "snd"
    with pytest.raises(UserError, match=r"'sweep\.halving' ranks draws"):
        parse_recipe(_recipe(["dann"], sweep={"draws": 2, "select": "dev", "halving": True}))
    with pytest.raises(UserError, match=r"'sweep\.select' = 'dev' is a label-free rule"):
        parse_recipe({"source": {"corpus": "casia"}, "target": {"corpus": "modma"},
                      "sweep": {"select": "dev"}, "strategies": [{"name": "dann"}]})


def test_evaluate_and_strategy_options_are_checked():
    r = parse_recipe(_recipe(["dann"], evaluate={"adapt": "tent", "per": "speaker"}))
    assert r.evaluate.adapt == ["tent"] and r.evaluate.per == "speaker"
    with pytest.raises(UserError, match=r"'evaluate\.adapt' must list distinct"):
        parse_recipe(_recipe(["dann"], evaluate={"adapt": ["adabn", "adabn"]}))
    with pytest.raises(UserError, match=r"'evaluate\.adapt\[0\]'|'evaluate\.adapt' must be"):
        parse_recipe(_recipe(["dann"], evaluate={"adapt": ["bn"]}))
    with pytest.raises(UserError, match=r"'evaluate\.tent_lr' must be > 0"):
        parse_recipe(_recipe(["dann"], evaluate={"tent_lr": 0.0}))
    with pytest.raises(UserError, match=r"strategy 'coral': option 'coral_weight' must be >= 0"):
        parse_recipe({**_recipe([]), "strategies": [{"name": "coral", "coral_weight": -1.0}]})
    with pytest.raises(UserError, match=r"strategy 'shot': option 'centroid_momentum'"):
        parse_recipe({**_recipe([]), "strategies": [{"name": "shot", "centroid_momentum": 0}]})


# --- the data's rules ---------------------------------------------------------------------------
def _arrays(unit: str = "subject", n_speakers: int = 6, labels: list[str] | None = None,
            seed: int = 0) -> Domain:
    labels = labels or ["a", "b"]
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"s{i}" for i in range(n_speakers)], 6)
    if unit == "subject":
        y = np.repeat(np.arange(n_speakers) % len(labels), 6)
    else:
        y = np.tile(np.arange(6) % len(labels), n_speakers)
    x = rng.normal(size=(len(y), 6, 16)).astype(np.float32)
    x[:, 0] += y[:, None]
    files = np.array([f"{s}/r{i}.wav" for i, s in enumerate(speakers)])
    positive = labels[1] if len(labels) == 2 else ""  # a binary target names its positive class
    return Domain.from_arrays(x, y, speakers, labels=labels, positive=positive, files=files,
                              unit=unit)


def test_target_classes_take_the_source_order_or_name_the_difference():
    t = _arrays("recording", labels=["b", "a"])
    ordered = t.with_label_order(["a", "b"])
    assert ordered.labels == ["a", "b"] and (ordered.y == 1 - t.y).all()
    with pytest.raises(UserError, match=r"target's classes must be the source's.*\['b', 'a'\].*"
                                        r"\['a', 'c'\].*label_map / keep"):
        t.with_label_order(["a", "c"])


def test_speaker_normalisation_z_scores_each_speaker_and_is_refused_for_subject_labels(
        tiny_modma):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(12, 3, 5)).astype(np.float32)
    groups = np.repeat(["a", "b", "c"], 4)
    x[groups == "b"] += 10.0
    z = speaker_zscores(x, groups)
    for g in "abc":
        np.testing.assert_allclose(z[groups == g].mean(axis=(0, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(z[groups == g].std(axis=(0, 2)), 1.0, atol=1e-4)
    with pytest.raises(UserError, match=r'features\.normalize = "speaker".*belongs to the '
                                        r"subject.*signal being classified"):
        load_domain([CorpusConfig(corpus="modma", root=str(tiny_modma),
                                  segments=SegmentsConfig(seconds=2.0, mode="pad"))],
                    FeatureSpec(normalize="speaker"), progress=False)


def _bn_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return backbones.create("timnet", in_features=6, filters=4, blocks=2, split=1,
                            num_classes=2, stem="bn").eval()


def test_adabn_takes_the_statistics_of_the_audio_it_adapts_to_and_leaves_the_model():
    model = _bn_model()
    x = torch.randn(20, 6, 16) * 3 + 5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adabn(model, x, batch=64)
    transpose, stem = adapted.general.stem  # (B, F, T) -> (1, F, T, B); 1x1 conv + BatchNorm
    with torch.no_grad():
        h = stem.conv(transpose(x.unsqueeze(0)))  # (1, C, T, B): what the BatchNorm normalises
    torch.testing.assert_close(stem.bn.running_mean, h.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stem.bn.running_var, h.var(dim=(0, 2, 3)), rtol=1e-3, atol=1e-4)
    for k, v in model.state_dict().items():  # the trained model is untouched
        assert torch.equal(v, before[k]), k
    assert len(batchnorm_layers(adapted)) == len(batchnorm_layers(model)) > 0


def test_adaptation_per_speaker_sees_each_speaker_alone():
    model = _bn_model()
    x = torch.randn(24, 6, 16)
    groups = np.repeat(["a", "b", "c"], 8)
    x[8:16] += 4.0  # speaker b sits elsewhere
    per_speaker = adapt_predict(model, x, groups, "adabn", "speaker")
    alone = adapt_predict(model, x[8:16], groups[8:16], "adabn", "fold")
    np.testing.assert_allclose(per_speaker[8:16], alone, rtol=1e-5, atol=1e-6)
    per_fold = adapt_predict(model, x, groups, "adabn", "fold")
    assert not np.allclose(per_fold[8:16], alone, atol=1e-4)


def _experiment(recipe_dict: dict, target: Domain, source: Domain):
    from transfer.grid.experiment import Experiment

    recipe = parse_recipe(recipe_dict)
    pre = backbones.create("timnet", in_features=6, num_classes=len(source.labels),
                           **recipe.backbone.options).state_dict()
    splits = make_splits(recipe.protocol, target.groups, target.y, recipe.seeds,
                         units=target.unit_ids, kind=target.unit, names=target.labels)
    return Experiment.from_domains(recipe, target, source, Pretrained(pre, {}, "k", True),
                                   splits, device=torch.device("cpu"))


TINY = {"seeds": [0], "device": "cpu", "protocol": {"folds": 2},
        "backbone": {"options": {"filters": 4, "blocks": 2, "split": 1, "stem": "bn"}},
        "train": {"epochs": 1, "batch_size": 8}, "diagnostics": {"max_samples": 20}}


def test_per_speaker_adaptation_is_refused_where_the_label_belongs_to_the_subject():
    source, target = _arrays("recording"), _arrays("subject", seed=1)
    recipe = {**_recipe(["source_only"]), **TINY, "target": {"corpus": "t", "labelled": False},
              "evaluate": {"adapt": ["none", "adabn"], "per": "speaker"}}
    with pytest.raises(UserError, match=r'evaluate\.per = "speaker".*belongs to the subject'):
        _experiment(recipe, target, source)
    recipe["evaluate"]["per"] = "fold"
    assert len(_experiment(recipe, target, source).plan()) == 4  # 2 folds x (plain, adabn)


class _Peeks(Coral):
    """coral, except that its classifier reads the target's labels (a bug to catch)."""

    def loss(self, tgt, src, progress):
        ce = self.ce(self.model(tgt.x), tgt.y)
        return ce, {"ce": ce.detach()}


def test_unlabelled_runs_hide_target_labels_and_a_source_free_run_gets_no_source(
        monkeypatch, scoped_strategies):
    """Every pack trains once for its adaptation variants; ``shot`` is handed no source (not
    even for a batch), ``dann`` is; a strategy that reads target labels fails its runs with
    the hidden labels' error; records carry the label-free scores."""
    import transfer.grid.experiment as experiment

    scoped_strategies("_peeks")(_Peeks)

    seen = {}
    fit_runs = experiment.fit_runs

    def spy(strategy, target, source, *args, **kwargs):
        seen[strategy.name] = (source, target.y.clone())
        return fit_runs(strategy, target, source, *args, **kwargs)

    monkeypatch.setattr(experiment, "fit_runs", spy)
    source, target = _arrays("recording", 4, ["a", "b"]), _arrays("recording", 6, ["b", "a"], 1)
    exp = _experiment({**_recipe(["shot", "dann", "_peeks"]), **TINY,
                       "target": {"corpus": "t", "labelled": False},
                       "evaluate": {"adapt": ["none", "adabn"]}}, target, source)
    assert exp.target.labels == ["a", "b"]  # the source's order
    records = {}
    for pack in exp.packs(exp.plan()):
        for res in exp.execute_pack(pack):
            records.setdefault(res.record.strategy, []).append(res.record)
    assert seen["shot"][0] is None and seen["dann"][0] is not None
    assert all((y == -1).all() for _, y in seen.values())
    assert all(r.source_free for r in records["shot"] + records["shot+adabn"])
    assert not any(r.source_free for r in records["dann"])
    assert all(r.status == "failed" and "out of bounds" in r.error for r in records["_peeks"])
    for r in records["dann"] + records["shot"]:
        assert r.ok and set(selection.RULES) <= set(r.selection)
        assert r.validation.rule == "source_acc" and "target_val_uar" in r.selection
    plain, adapted = records["dann"][0], records["dann+adabn"][0]
    assert plain.curves == adapted.curves and plain.pack == adapted.pack == 2


# --- label-free selection -----------------------------------------------------------------------
def test_selection_scores_against_reference_values():
    confident = np.array([[0.98, 0.02], [0.03, 0.97], [0.99, 0.01], [0.02, 0.98]])
    unsure = np.full((4, 2), 0.5)
    assert selection.entropy_score(confident) > selection.entropy_score(unsure)
    assert selection.entropy_score(unsure) == pytest.approx(-math.log(2))
    collapsed = np.array([[0.99, 0.01]] * 4)
    assert selection.info_max_score(confident) > selection.info_max_score(collapsed)
    assert selection.snd_score(confident) < selection.snd_score(unsure)  # dense neighbours
    losses, w = np.array([1.0, 2.0, 3.0]), np.ones(3)
    assert selection.iwv_score(losses, w) == pytest.approx(-2.0)
    assert selection.dev_score(losses, w) == pytest.approx(-2.0)  # no variance: no correction
    w2 = np.array([0.5, 1.0, 1.5])
    wl = w2 * losses
    eta = -np.cov(wl, w2)[0, 1] / w2.var(ddof=1)
    assert selection.dev_score(losses, w2) == pytest.approx(-(wl.mean() + eta * (w2.mean() - 1)))


def test_importance_weights_favour_source_segments_that_look_like_the_target():
    rng = np.random.default_rng(0)
    zs = rng.normal(size=(200, 2))
    zt = rng.normal(size=(200, 2)) + [2.0, 0.0]
    w = selection.importance_weights(zs, zt)
    assert w[zs[:, 0] > 1].mean() > 3 * w[zs[:, 0] < -1].mean()


def test_selection_report_regret_is_the_oracle_minus_the_pick():
    from transfer.report.selection import regrets, selection_table

    def rec(label, fold, test, **scores):
        return run_record(key=f"{label}-{fold}", strategy=label, fold=fold,
                          metrics={"unit_uar": test}, selection=scores)

    records = [rec("a", 0, 0.8, source_acc=0.9, snd=0.1), rec("b", 0, 0.6, source_acc=0.5,
                                                                snd=0.9),
               rec("a", 1, 0.5, source_acc=0.9, snd=0.1), rec("b", 1, 0.7, source_acc=0.5,
                                                                snd=0.9)]
    got = regrets(records)
    assert [v for v, _ in got["source_acc"]] == pytest.approx([0.0, 0.2])
    assert [v for v, _ in got["snd"]] == pytest.approx([0.2, 0.0])
    assert [v for v, _ in got["random"]] == pytest.approx([0.1, 0.1])
    table = selection_table(records).set_index("rule")
    assert table.loc["source_acc", "regret_mean"] == pytest.approx(0.1)
    assert table.loc["source_acc", "picked_best"] == 0.5 and table.loc["iwv", "pairs"] == 0


# --- the recipes, end to end --------------------------------------------------------------------
def test_cross_corpus_and_loso_tta_recipes_dry_run(capsys):
    from transfer.run import main

    for name, expect, hidden in (("casia_to_emodb_cross_corpus", "adabn, tent (per fold)", True),
                                 ("casia_loso_tta", "adabn, tent (per speaker)", False)):
        assert main([str(ROOT / "recipes" / f"{name}.toml"), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert expect in out and "planned runs" in out
        assert ("target labels hidden" in out) == hidden


TINY_SETS = ["backbone.options.filters=8", "backbone.options.blocks=3", "backbone.options.split=1",
             "pretrain.epochs=2", "pretrain.batch_size=16", "pretrain.patience=0",
             "train.epochs=2", "train.batch_size=8", "train.patience=0", "seeds=[0]", "jobs=1",
             "diagnostics.max_samples=50", "evaluate.tent_steps=2"]


@pytest.mark.slow
def test_cross_corpus_recipe_runs_on_the_synthetic_pair(tmp_path):
    """The shipped recipe on the synthetic CASIA-like and EmoDB-like corpora (their real
    layouts), tiny, with two of its strategies (the reference and the source-free one; every
    strategy runs unlabelled in test_run and the test above): the table, the leak report and
    the selection report with every rule."""
    recipe = load_recipe(ROOT / "recipes" / "casia_to_emodb_cross_corpus.toml", TINY_SETS + [
        "source.synthetic=tiny", "target.synthetic=tiny", "source.segments.seconds=2.0",
        "target.segments.seconds=2.0", "protocol.folds=2"])
    recipe.strategies = [e for e in recipe.strategies if e.name in ("source_only", "shot")]
    out, table, failed = run_recipe(recipe, results_dir=tmp_path, progress=False)
    assert failed == 0
    rows = list(table["strategy"])
    assert rows == ["source_only", "source_only+adabn", "source_only+tent", "shot", "shot+adabn",
                    "shot+tent"]
    assert table.attrs["reference"] == "source_only"
    assert "segment-random" in (out / "leak.md").read_text()
    report = (out / "selection.md").read_text()
    for rule in [*selection.RULES, "random", "target_val_uar"]:
        assert f"| {rule} |" in report, rule
    summary = json.loads((out / "summary.json").read_text())
    assert summary["order"] == rows


@pytest.mark.slow
def test_loso_tta_recipe_runs_on_a_synthetic_casia(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "casia_loso_tta.toml", TINY_SETS + [
        "target.synthetic=loso", "target.segments.seconds=2.0"])
    out, table, failed = run_recipe(recipe, results_dir=tmp_path, progress=False)
    assert failed == 0
    assert list(table["strategy"]) == ["scratch", "scratch+adabn@speaker", "scratch+tent@speaker"]
    assert (table["runs"] == 4).all()  # one fold per speaker


# --- the shared losses against their papers' formulas -------------------------------------------
def test_coral_mcc_and_information_maximisation_match_reference_formulas():
    from transfer.train.alignment import coral_loss, information_maximization, mcc_loss

    g = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(2, 20, 5, generator=g), torch.randn(2, 30, 5, generator=g) * 2
    for k in range(2):  # CORAL: ||cov_s - cov_t||_F^2 / (4 d^2), numpy's unbiased covariance
        cs, ct = np.cov(xs[k].numpy(), rowvar=False), np.cov(xt[k].numpy(), rowvar=False)
        assert coral_loss(xs, xt)[k].item() == pytest.approx(((cs - ct) ** 2).sum() / 100,
                                                             rel=1e-5)
    logits = torch.randn(2, 16, 3, generator=g) * 3
    for k in range(2):  # MCC (Jin et al. 2020, eq. 1-6), one run at a time, plainly
        p = torch.softmax(logits[k] / 2.5, -1).double()
        h = -(p * torch.log(p + 1e-5)).sum(-1)
        w = (1 + torch.exp(-h)) * 16 / (1 + torch.exp(-h)).sum()
        c = (p * w[:, None]).T @ p
        c = c / c.sum(1, keepdim=True)
        expected = (c.sum() - c.trace()) / 3
        assert mcc_loss(logits, 2.5)[k].item() == pytest.approx(expected.item(), rel=1e-5)
    p = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]])
    ent, div = information_maximization(p)
    h = lambda q: -(q * torch.log(q + 1e-5)).sum(-1)  # noqa: E731
    assert ent.item() == pytest.approx(h(p[0]).mean().item(), rel=1e-6)
    assert div.item() == pytest.approx(h(p[0].mean(0)).item(), rel=1e-6)


def test_cdan_conditions_on_predictions_and_weights_certain_segments():
    from transfer.train.alignment import (
        DomainDiscriminator,
        GradientReversal,
        conditional_adversarial_loss,
        multilinear_map,
    )

    f, p = torch.randn(1, 4, 3), torch.softmax(torch.randn(1, 4, 2), -1)
    h = multilinear_map(f, p)
    assert h.shape == (1, 4, 6)
    torch.testing.assert_close(h[0, 1], torch.outer(p[0, 1], f[0, 1]).flatten())
    torch.manual_seed(0)
    disc, grl = DomainDiscriminator(6, 8).eval(), GradientReversal(1.0)  # no dropout draws
    sure = torch.tensor([[[0.99, 0.01]] * 4])
    unsure = torch.full((1, 4, 2), 0.5)
    for ps, pt in ((sure, unsure), (unsure, sure)):  # CDAN+E: weights 1 + exp(-entropy)
        loss, _ = conditional_adversarial_loss(disc, grl, f, ps, f, pt, entropy_weight=True)
        logits = disc(torch.cat([multilinear_map(f, ps), multilinear_map(f, pt)], 1))[0]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.tensor([1.0] * 4 + [0.0] * 4), reduction="none")
        q = torch.cat([ps, pt], 1)[0]
        w = 1 + torch.exp((q * torch.log(q + 1e-5)).sum(-1))
        assert loss.item() == pytest.approx(((bce * w).sum() / w.sum()).item(), rel=1e-5)
