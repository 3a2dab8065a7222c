"""What a trained pack's runs measured: one :class:`~transfer.grid.records.RunResult` per planned
run, its record's typed results filled in (test metrics per segment and decision unit, the
units' outputs, validation scores, calibration, curves, confusion, the domain gap and the
label-free selection scores) and, with ``--export``, the model package beside it.

:meth:`transfer.grid.experiment.Experiment.execute_pack` trains a pack and calls
:func:`score_pack`; the test fold is read here, once, after training.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer.common.cache import content_hash
from transfer.evaluate.calibration import run_calibration
from transfer.evaluate.metrics import confusion, evaluate, unit_outputs, validation_scores
from transfer.evaluate.outputs import Calibration, Gap, UnitOutputs, Validation
from transfer.evaluate.protocols import Split
from transfer.grid.records import EpochRow, RunRecord, RunResult
from transfer.train.device import to_device
from transfer.train.engine import FitResult
from transfer.train.infer import embed_runs, predict_runs
from transfer.train.packs import unpack_model
from transfer.train.tensors import DomainTensors, Standardizer

if TYPE_CHECKING:
    from transfer.grid.experiment import Experiment, RunSpec


@dataclasses.dataclass
class PackOutputs:
    """A trained pack's outputs per trained run (the pack's runs in order).

    Shape:
        probs: per run (N_test, K) test probabilities; val_probs: per run (N_val, K).
    """

    strategy: Any
    target: DomainTensors
    runs: list[RunSpec]
    fits: list[FitResult]
    probs: list[np.ndarray]
    val_probs: list[np.ndarray]
    gaps: list[Gap | None]
    selections: list[dict[str, float]]
    source_free: bool


def score_pack(exp: Experiment, strategy: Any, target: DomainTensors,
               source: DomainTensors | None, runs: list[RunSpec], fits: list[FitResult],
               specs: list[RunSpec], heads: list[RunRecord], source_free: bool
               ) -> list[RunResult]:
    """The result of every spec of a trained pack (``runs``: the trained runs, one per
    (protocol, fold, seed, draw); ``specs``: the planned runs, test-time adaptation variants
    included, with their record heads ``heads``)."""
    amp, dev = exp.recipe.train.amp, exp.device
    splits = [exp.split_of(s) for s in runs]
    tests = [to_device(sp.test, dev) for sp in splits]
    vals = [to_device(sp.val, dev) for sp in splits]
    probs = [p.cpu().numpy() for p in predict_runs(strategy, target, tests, amp=amp)]
    val_probs = [p.cpu().numpy() for p in predict_runs(strategy, target, vals, amp=amp)]
    gaps: list[Gap | None] = [None] * len(runs)
    selections: list[dict[str, float]] = [{} for _ in runs]
    if source is not None and exp.recipe.diagnostics.enabled:
        gaps = list(_gaps(exp, strategy, source, target, tests, runs))
    if source is not None and not exp.recipe.target.labelled:
        selections = _selection_scores(exp, strategy, target, source, vals, val_probs, splits)
    pack = PackOutputs(strategy, target, runs, fits, probs, val_probs, gaps, selections,
                       source_free)
    index = {run.run: k for k, run in enumerate(runs)}
    return [_spec_result(exp, pack, spec, index[spec.run], head)
            for spec, head in zip(specs, heads, strict=True)]


def _spec_result(exp: Experiment, pack: PackOutputs, spec: RunSpec, k: int, head: RunRecord
                 ) -> RunResult:
    """The result of ``spec``, trained as run ``k`` of the pack (a test-time adaptation
    variant adapts run ``k``'s model to its test audio first)."""
    r, split, fit = exp.recipe, exp.split_of(spec), pack.fits[k]
    if fit.diverged:
        return RunResult(dataclasses.replace(
            head, status="failed", best_epoch=fit.best_epoch, epochs_run=fit.epochs_run,
            stopped=fit.stopped, error=f"FloatingPointError: training diverged (non-finite "
                                       f"loss) at epoch {fit.epochs_run}"))
    prob = pack.probs[k]
    if spec.adapt != "none":
        prob = _adapted_probs(exp, pack.strategy, k, split, pack.target.norm[k], spec)
    record = _scores(exp, head, split, fit, prob, pack.val_probs[k])
    record = dataclasses.replace(record, gap=pack.gaps[k], source_free=pack.source_free)
    if not r.target.labelled and pack.selections[k]:
        # a sweep selects by the recipe's label-free rule; the validation labels' score is
        # kept only for the selection report (what a few target labels would give)
        scores = {**pack.selections[k], "target_val_uar": record.validation.unit_uar}
        rule = r.sweep.select if r.sweep.select != "validation" else "source_acc"
        record = dataclasses.replace(record, selection=scores,
                                     validation=Validation(rule=rule, score=scores[rule]))
    package = None
    if r.export and spec.protocol in ("", r.protocol.name) and spec.adapt == "none":
        package = _package(exp, unpack_model(pack.strategy, k), pack.target.norm[k], spec,
                           record.metrics)  # the model as trained
    return RunResult(record, package)


def _scores(exp: Experiment, head: RunRecord, split: Split, fit: FitResult, prob: np.ndarray,
            val_prob: np.ndarray) -> RunRecord:
    """``head`` with what the finished run measured: test metrics (per segment and decision
    unit), the decision units' outputs (for CIs, subgroups, thresholds), validation scores
    (for selecting a sweep's draw; never the test fold), calibration, curves and confusion."""
    t = exp.target
    y_test, test_units = t.y[split.test], t.unit_ids[split.test]
    y_val, val_units = t.y[split.val], t.unit_ids[split.val]
    cal, scaled = run_calibration(val_prob, y_val, prob, y_test, t.positive_index)
    units = unit_outputs(y_test, prob, test_units, t.unit)
    covariates = t.unit_covariates(units["id"])
    return dataclasses.replace(
        head, status="ok",
        metrics=evaluate(y_test, prob, test_units, t.positive_index, t.unit),
        units=UnitOutputs(**units, covariates=covariates or {},
                          prob_ts=unit_outputs(y_test, scaled, test_units, t.unit)["prob"]),
        val_units=(UnitOutputs(**unit_outputs(y_val, val_prob, val_units, t.unit))
                   if len(split.val) else None),
        covariates_note=(None if covariates else
                         t.covariates_note or "the target has no subject covariates"),
        calibration=Calibration.from_dict(cal),
        validation=Validation.from_dict(validation_scores(y_val, val_prob, val_units,
                                                          t.positive_index, t.unit)),
        best_epoch=fit.best_epoch, epochs_run=fit.epochs_run, stopped=fit.stopped,
        train_seconds=round(fit.seconds, 2), curves=[EpochRow.of(row) for row in fit.curves],
        confusion=confusion(y_test, prob, len(t.labels)))


def _adapted_probs(exp: Experiment, strategy: Any, k: int, split: Split, norm: Standardizer,
                   spec: RunSpec) -> np.ndarray:
    """Test probabilities of run ``k`` after test-time adaptation to its test audio."""
    from transfer.train.adapt import adapt_predict

    ev, d = exp.recipe.evaluate, exp._device_data()
    model = unpack_model(strategy, k).to(exp.device)
    x = norm(d["tx"][to_device(split.test, exp.device)])  # (N, F, T), as in training
    return adapt_predict(model, x, exp.target.groups[split.test], spec.adapt, spec.per,
                         ev.tent_steps, ev.tent_lr, ev.batch_size)


def _selection_scores(exp: Experiment, strategy: Any, target: DomainTensors,
                      source: DomainTensors, vals: list, val_probs: list[np.ndarray],
                      splits: list[Split]) -> list[dict[str, float]]:
    """Per run, every label-free selection rule's score (:mod:`transfer.evaluate.selection`)
    from the run's outputs on its target validation audio (labels unread) and on the
    held-out source speakers."""
    from transfer.evaluate.selection import label_free_scores

    k, held = len(vals), source.val[0]
    src_k = source.for_runs(k)
    p_s = predict_runs(strategy, src_k, [held] * k, amp=exp.recipe.train.amp)
    z_t = embed_runs(strategy, target, vals)
    z_s = embed_runs(strategy, src_k, [held] * k)
    y_s = source.y[held].cpu().numpy()
    return [label_free_scores(val_probs[j], p_s[j].cpu().numpy(), y_s, z_t[j].cpu().numpy(),
                              z_s[j].cpu().numpy(), seed=sp.seed)
            for j, sp in enumerate(splits)]


def _gaps(exp: Experiment, strategy: Any, source: DomainTensors, target: DomainTensors,
          tests: list, specs: list[RunSpec]) -> list[Gap]:
    """Per run, the domain gap of its ``general`` features between the held-out source
    speakers and its test fold (with a PCA projection for the first split, to plot)."""
    from transfer.evaluate.diagnostics import domain_gap

    r = exp.recipe
    k = len(specs)
    zs = embed_runs(strategy, source.for_runs(k), [source.val[0]] * k)
    zt = embed_runs(strategy, target, tests)
    first = next(iter(exp.splits.values()))
    return [Gap.from_dict(domain_gap(a.cpu().numpy(), b.cpu().numpy(),
                                     max_samples=r.diagnostics.max_samples, seed=spec.seed,
                                     projection=exp.split_of(spec) is first
                                     and r.diagnostics.plot))
            for a, b, spec in zip(zs, zt, specs, strict=True)]


def _package(exp: Experiment, model: Any, norm: Standardizer, spec: RunSpec,
             metrics: dict[str, float]) -> dict[str, Any]:
    """The model package of one run (:func:`transfer.train.package.make_package`)."""
    from transfer.data.cards import load_card
    from transfer.data.domain import _resolve, feature_spec, segment_spec
    from transfer.train.package import make_package

    r = exp.recipe
    card = load_card(_resolve(r.target.corpus, exp.base))
    seg = segment_spec(r.target, card, r.features.sample_rate)
    return make_package(
        model, backbone=r.backbone.name, segments=seg, features=feature_spec(r.features),
        mean=norm.mean, std=norm.std, labels=exp.target.labels, positive=exp.target.positive,
        recipe_hash=content_hash(r.to_dict()),
        info={"strategy": spec.strategy, "fold": spec.fold, "seed": spec.seed,
              "recipe": r.name, **{k: float(v) for k, v in metrics.items()}})
