"""One experiment: a recipe's prepared data, pretrained model and splits, its plan of runs, and
the single run (a pack of runs) that executors call.

:class:`Experiment` is built from a recipe (:meth:`Experiment.load` reads the corpora) or from
domains already in memory (:meth:`Experiment.from_domains`: a benchmark, a notebook, a test).
:meth:`Experiment.plan` lists the runs (:class:`RunSpec`); :meth:`Experiment.execute_pack`
trains and evaluates one pack and returns one record per run. Executors
(:mod:`transfer.grid.executors`) call it; it never imports them. What a trained pack measured
is built in :mod:`transfer.grid.measure`.

Why one file (above ~400 lines): the experiment's preparation, its plan, its packing and
its execution all read the same prepared state (data, splits, pretrained model, device
tensors), and the small helpers at the end (``environment``, ``spread``) are what
``transfer.run`` and the executors need of an experiment.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer import UserError
from transfer.common.cache import content_hash
from transfer.common.config import Recipe, StrategyEntry
from transfer.data import Domain, load_domain
from transfer.data.domain import check_per_speaker
from transfer.evaluate.protocols import SPEAKER_DEPENDENT, Split, make_splits, protocols, with_protocol
from transfer.grid import sweep
from transfer.grid.folder import toolkit_info
from transfer.grid.measure import score_pack
from transfer.grid.records import RunRecord, RunResult
from transfer.train.device import amp_enabled, cpu_has_native_bf16, pick_device, to_device
from transfer.train.engine import Halving, fit_runs
from transfer.train.packs import build_pack
from transfer.train.pretrain import (
    Pretrained,
    backbone_errors,
    backbone_options,
    make_backbone_factory,
    pretrain,
    source_split,
)
from transfer.train.strategies import Context, get_strategy
from transfer.train.tensors import DomainTensors, Standardizer

# On a CPU a pack's activations stream from memory; beyond ~48 MiB per activation tensor the
# per-core throughput falls (TIM-Net, 39 x 313 segments, batch 64, one thread on a 2-core AMD
# EPYC with 32 MiB L3: 150 segment-steps/s with 8 runs packed, 136 with 10, 108 with 12 to 15).
# The backbone says how large its largest activation of one run is (backbones.activation_bytes).
CPU_PACK_BYTES = 48 * 2**20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One planned run: a strategy entry (its label) on one fold and seed, under a protocol,
    with one sweep draw (0: the recipe's settings; ``values``: the draw's settings)."""

    strategy: str  # the entry's label
    fold: int
    seed: int
    key: str
    protocol: str = ""  # "" = the recipe's protocol.name; else one of protocol.compare
    draw: int = 0
    values: tuple[tuple[str, Any], ...] = ()
    adapt: str = "none"  # test-time adaptation (evaluate.adapt); variants share the training
    per: str = "fold"  # what one adaptation sees (evaluate.per)

    @property
    def hparams(self) -> dict[str, Any]:
        """The draw's values (empty for draw 0)."""
        return dict(self.values)

    @property
    def group(self) -> tuple[str, int, int]:
        """The draws that compete for selection: one (protocol, fold, seed)."""
        return (self.protocol, self.fold, self.seed)

    @property
    def run(self) -> tuple[str, int, int, int]:
        """What is trained: (protocol, fold, seed, draw); its adaptation variants share it."""
        return (self.protocol, self.fold, self.seed, self.draw)

    @property
    def row(self) -> str:
        """The table row: the entry's label, with its test-time adaptation if any."""
        if self.adapt == "none":
            return self.strategy
        return f"{self.strategy}+{self.adapt}" + ("@speaker" if self.per == "speaker" else "")


class Experiment:
    """Everything shared by the runs of one recipe: data, pretrained model, splits."""

    def __init__(self, recipe: Recipe, *, base: Path | None = None, progress: bool = True,
                 device: torch.device | None = None) -> None:
        self.recipe = recipe
        self.base = base
        self.progress = progress
        self.device = device or pick_device(recipe.device)
        self.entries = {e.label: e for e in recipe.strategies}
        self.target: Domain | None = None
        self.source: Domain | None = None
        self.pretrained: Pretrained | None = None
        self.splits: dict[tuple[str, int, int], Split] = {}  # (protocol, fold, seed)
        self._tensors: dict[str, Any] = {}
        # Every run uses the same number of CPU threads, whichever executor runs it: reduction
        # order depends on it, and results must not depend on the executor.
        self.threads = recipe.threads or torch.get_num_threads()

    @classmethod
    def from_domains(cls, recipe: Recipe, target: Domain, source: Domain | None,
                     pretrained: Pretrained | None, splits: list[Split], *,
                     device: torch.device | None = None, progress: bool = False,
                     base: Path | None = None) -> Experiment:
        """An experiment on domains already in memory (a benchmark, a notebook, a test)."""
        exp = cls(recipe, base=base, progress=progress, device=device)
        exp.target, exp.source, exp.pretrained = target, source, pretrained
        exp.check_target()
        exp.check_domains()
        exp.splits = {(s.protocol, s.fold, s.seed): s for s in splits}
        return exp

    # --- preparation ---------------------------------------------------------------------
    def load(self) -> Experiment:
        """Read the corpora (:meth:`load_data`, unless done), pretrain on the source where a
        strategy needs it (or load the cached model), and make the splits."""
        r = self.recipe
        if self.target is None:
            self.load_data()
        if any(get_strategy(e.name).needs_source for e in r.strategies):
            self.pretrained = pretrain(r, self.source, self.device)
        return self.build_splits()

    def load_data(self) -> Experiment:
        """Read the target and source corpora (features from the cache), check the target and
        that the recipe's backbone can be built on these features: an option that cannot
        build a model is one error now, not a failure of every run."""
        r = self.recipe
        self.target = load_domain([r.target], r.features, progress=self.progress, base=self.base)
        self.check_target()
        if r.source:
            self.source = load_domain(r.source, r.features, progress=self.progress, base=self.base)
        self.check_domains()
        make_backbone_factory(r, self.target.x.shape[1], self.target.stacked_layers)(
            len(self.target.labels))
        return self

    def check_target(self) -> None:
        """The target has two labels or more, and a binary one names its positive class:
        sensitivity and specificity are that class's recall and the other's, so without it
        they would silently measure whichever label happens to be second."""
        t = self.target
        if len(t.labels) < 2:
            raise UserError(f"target {t.name} has only the label(s) {t.labels}")
        if len(t.labels) == 2 and t.positive not in t.labels:
            why = (f"its positive class {t.positive!r} is not one of them" if t.positive else
                   "it names no positive class")
            raise UserError(f"target {t.name} is binary ({t.labels[0]!r} vs {t.labels[1]!r}) but "
                            f"{why}, so sensitivity and specificity would have no meaning: set "
                            "[target] positive = \"<one of the two labels>\" in the recipe, or "
                            "[labels] positive in the corpus card")

    def data_identity(self) -> dict[str, Any]:
        """What the runs are trained on: the target's and the source's feature keys (files with
        size and mtime, segment and feature settings) and a content hash of the
        source-pretrained model. A resumed folder must have been recorded on the same."""
        return {"target": list(self.target.keys) if self.target else [],
                "source": list(self.source.keys) if self.source else [],
                "pretrained": self.pretrained_digest()}

    def pretrained_digest(self) -> str | None:
        """SHA-256 (16 hex digits) of the source-pretrained weights, None without them: a
        model retrained with the same settings on another machine or torch version has other
        weights, and runs that start from it are other runs."""
        if self.pretrained is None:
            return None
        if getattr(self, "_pretrained_digest", None) is None:
            digest = hashlib.sha256()
            for name in sorted(self.pretrained.state):
                tensor = self.pretrained.state[name].detach().cpu().contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                              else tensor.view(torch.int16).numpy().tobytes())
            self._pretrained_digest = digest.hexdigest()[:16]
        return self._pretrained_digest
    def check_domains(self) -> None:
        """What the recipe asks of the loaded domains: in the unlabelled mode the target's
        classes put in the source's order (the target is scored with the source's head);
        per-speaker test-time adaptation refused where the label belongs to the subject."""
        r = self.recipe
        if not r.target.labelled and self.source is not None:
            self.target = self.target.with_label_order(self.source.labels,
                                                       f"the source {self.source.name}")
        if r.evaluate.per == "speaker" and any(a != "none" for a in r.evaluate.adapt):
            check_per_speaker(self.target.unit, 'evaluate.per = "speaker"',
                              f"the target {self.target.name}")
        if r.export and r.features.normalize == "speaker":
            raise UserError('--export with features.normalize = "speaker": an exported model '
                            "would need each new speaker's statistics, which transfer.predict "
                            "does not compute; normalise per corpus to export")

    def build_splits(self) -> Experiment:
        """The splits of the target under the recipe's protocol and the compared ones."""
        r, t = self.recipe, self.target
        for name in protocols(r.protocol):
            for split in make_splits(with_protocol(r.protocol, name), t.groups, t.y, r.seeds,
                                     units=t.unit_ids, kind=t.unit, names=t.labels):
                self.splits[(name, split.fold, split.seed)] = split
        return self

    def run_key(self, entry: StrategyEntry, fold: int, seed: int, protocol: str = "",
                values: dict[str, Any] | None = None, adapt: str = "none") -> str:
        """What a run's result depends on, hashed: the recipe's result-relevant settings, the
        strategy and its options, the fold, seed and protocol, a sweep draw's values, the
        test-time adaptation it is scored with, and the data: the target's and the source's
        (the source's enters every record through the domain-gap diagnostics) and, for a
        strategy that starts from it, the pretrained model's weights. (``sweep.*`` itself is
        not part of it: a rerun with more draws reuses the draws already trained.)"""
        data = self.recipe.to_dict()
        for k in ("name", "description", "seeds", "strategies", "jobs", "device", "export",
                  "sweep", "report", "log"):  # report and log settings change no result
            data.pop(k, None)
        data["protocol"].pop("compare", None)  # a run is keyed by the protocol it runs under
        data["protocol"]["name"] = protocol or data["protocol"]["name"]
        inputs: list[Any] = [self.target.keys if self.target else None]
        if self.source is not None:
            inputs.append({"source": self.source.keys})
        if get_strategy(entry.name).needs_source and self.pretrained is not None:
            inputs.append({"pretrained": self.pretrained_digest()})
        adapting = data.pop("evaluate")  # keyed by its own adaptation, not the recipe's list
        keyed = {"recipe": data, "strategy": entry.name,
                 "options": dataclasses.asdict(entry.options), "fold": fold,
                 "seed": seed, "data": inputs}
        if values:
            keyed["draw"] = values
        if adapt != "none":
            keyed["adapt"] = {**adapting, "adapt": adapt}
        return content_hash(keyed)

    def for_worker(self) -> Experiment:
        """A copy to ship to a worker process or a Ray task: the prepared data, splits and
        pretrained model travel with it; nothing is loaded again from the recipe's corpora."""
        clone = copy.copy(self)
        clone._tensors = {}
        clone.progress = False
        return clone

    def plan(self) -> list[RunSpec]:
        """Every run of the recipe: strategies x sweep draws x (protocol, fold, seed). A sweep
        tunes under the recipe's protocol; the compared protocols (the leak report) run the
        recipe's settings (draw 0) only."""
        r, ev = self.recipe, self.recipe.evaluate
        out = []
        for e in r.strategies:
            for d in range(r.sweep.draws):
                values = sweep.draw(r, e, d)
                for protocol, fold, seed in self.splits:
                    if d and protocol != r.protocol.name:
                        continue
                    out += [RunSpec(e.label, fold, seed,
                                    self.run_key(e, fold, seed, protocol, values, adapt),
                                    protocol, d, tuple(values.items()), adapt, ev.per)
                            for adapt in ev.adapt]  # test-time adaptation variants
        return out

    def row_labels(self) -> list[str]:
        """The table's rows in order: every entry, with its test-time adaptation variants."""
        return list(dict.fromkeys(s.row for s in self.plan()))

    def split_of(self, spec: RunSpec) -> Split:
        """The split ``spec`` trains and tests on (its protocol, fold and seed)."""
        return self.splits[(spec.protocol or self.recipe.protocol.name, spec.fold, spec.seed)]

    def _device_data(self) -> dict[str, Any]:
        if not self._tensors:
            t, dev = self.target, self.device
            self._tensors["tx"] = to_device(t.x, dev)
            self._tensors["ty"] = to_device(t.y, dev)
            if self.source is not None:
                s = self.source
                train, held = (source_split(s, self.recipe.pretrain.val_fraction,
                                            self.recipe.pretrain.seed))
                self._tensors["sx"] = to_device(s.x, dev)
                self._tensors["sy"] = to_device(s.y, dev)
                self._tensors["s_train"] = to_device(train, dev)
                self._tensors["s_held"] = to_device(held, dev)
        return self._tensors

    # --- packs of runs ---------------------------------------------------------------------
    def pack_size(self) -> int:
        """Runs of one strategy entry trained together as one model (``train.pack``; 0 = all
        runs of the entry, at most 16, and on a CPU at most as many as keep one activation of
        the pack within :data:`CPU_PACK_BYTES`; 1 where the backbone cannot pack)."""
        import backbones

        if not backbones.packable(self.recipe.backbone.name):
            if self.recipe.train.pack != 1 and self.progress:
                log.info(f"note: backbone {self.recipe.backbone.name!r} cannot pack runs into "
                         "one model; its runs train one at a time")
            return 1
        if self.recipe.train.pack:
            return self.recipe.train.pack
        if self.device.type != "cpu" or self.target is None:
            return 16
        _, features, frames = self.target.x.shape
        opts = backbone_options(self.recipe, features, self.target.stacked_layers)
        with backbone_errors():  # the backbone knows its largest activation of one run
            per_run = backbones.activation_bytes(self.recipe.backbone.name, opts,
                                                 self.recipe.train.batch_size, frames)
        return int(min(16, max(1, CPU_PACK_BYTES // per_run)))

    def packs(self, todo: list[RunSpec]) -> list[list[RunSpec]]:
        """Group runs into packs: same strategy entry, the same batch size (a fold with fewer
        training segments than a batch trains with smaller batches) and, in a sweep, the same
        values of every setting that is not per-run; a group larger than the pack size is
        split into packs of nearly equal size. With successive halving the draws of one
        (fold, seed) stay in one pack where the pack size allows (they compete)."""
        size = self.pack_size()
        groups: dict[tuple, list[RunSpec]] = {}
        for spec in todo:
            n_train = len(self.split_of(spec).train)
            batch = min(self.recipe.train.batch_size, n_train)
            entry = self.entries[spec.strategy]
            key = (spec.strategy, batch, sweep.pack_key(self.recipe, entry, spec.hparams))
            groups.setdefault(key, []).append(spec)
        out = []
        for group in groups.values():
            first = {g: i for i, g in enumerate(dict.fromkeys(s.group for s in group))}
            group.sort(key=lambda s: (first[s.group], s.draw))  # a (fold, seed)'s draws together
            n_packs = -(-len(group) // size)
            out += split_evenly(group, n_packs, self.unit_of)
        return out

    def unit_of(self, spec: RunSpec) -> Any:
        """What a split keeps together: with successive halving, the competing draws of one
        (fold, seed); else each trained run with its test-time adaptation variants."""
        return spec.group if sweep.rung_epochs(self.recipe) else spec.run

    def pack_cost(self, pack: list[RunSpec]) -> int:
        """A pack's relative cost for ordering work: its trained runs, twice over for a
        strategy that also steps through the source corpus."""
        runs = len({s.run for s in pack})
        return runs * (2 if get_strategy(self.entries[pack[0].strategy].name).needs_source
                       else 1)

    def schedule(self, packs: list[list[RunSpec]], slots: int) -> list[list[RunSpec]]:
        """The packs in the order ``slots`` parallel workers should take them (:func:`spread`);
        on a GPU, where a pack fills the device, ordered but never split."""
        return spread(packs, slots if self.device.type == "cpu" else 1, self.pack_cost,
                      self.unit_of)

    def execute(self, spec: RunSpec, on_epoch=None) -> RunRecord:
        """Train and evaluate one run (a pack of one); its record (no model package)."""
        return self.execute_pack([spec], on_epoch)[0].record

    def execute_pack(self, specs: list[RunSpec], on_epoch=None) -> list[RunResult]:
        """Train and evaluate the runs of one pack (one strategy entry, several folds and
        seeds) as one model; one result (record, and model package with ``--export``) per run.
        A failure is returned as failed records, not raised: an error fails the whole pack, a
        diverging run only itself."""
        entry = self.entries[specs[0].strategy]
        cls = get_strategy(entry.name)
        t0 = time.perf_counter()
        try:
            results = self._train_and_test(entry, cls, specs, on_epoch)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - a failing pack must not stop the grid
            return self.failed_records(specs, f"{type(err).__name__}: {err}",
                                       traceback.format_exc(limit=8), time.perf_counter() - t0)
        seconds = round(time.perf_counter() - t0, 2)
        return [RunResult(dataclasses.replace(res.record, seconds=seconds), res.package)
                for res in results]

    def head(self, spec: RunSpec, pack: int) -> RunRecord:
        """The record of a run before its results: what it says whether it succeeded or not
        (``pack``: how many runs trained together)."""
        entry = self.entries[spec.strategy]
        split = self.split_of(spec)
        protocol = spec.protocol or self.recipe.protocol.name
        return RunRecord(key=spec.key, strategy=spec.row, strategy_name=entry.name,
                         fold=spec.fold, seed=spec.seed, protocol=protocol,
                         speaker_dependent=protocol in SPEAKER_DEPENDENT, unit=self.target.unit,
                         uses_source=get_strategy(entry.name).needs_source,
                         labels=list(self.target.labels), positive=self.target.positive,
                         sizes={"train": len(split.train), "val": len(split.val),
                                "test": len(split.test)}, pack=pack,
                         draw=spec.draw, hparams=spec.hparams, adapt=spec.adapt)

    def failed_records(self, specs: list[RunSpec], error: str, tb: str = "",
                       seconds: float = 0.0) -> list[RunResult]:
        """Results of runs that failed (a raising pack, a lost worker)."""
        pack = len({s.run for s in specs})
        return [RunResult(dataclasses.replace(self.head(s, pack), status="failed", error=error,
                                              traceback=tb, seconds=round(seconds, 2)))
                for s in specs]

    def _domains(self, specs: list[RunSpec]) -> tuple[DomainTensors, DomainTensors | None]:
        """The pack's target (per run: its fold's training and validation indices and
        standardiser) and source tensors on the device."""
        r, d, dev = self.recipe, self._device_data(), self.device
        splits = [self.split_of(s) for s in specs]
        trains = [to_device(sp.train, dev) for sp in splits]
        norms = [Standardizer.fit(d["tx"], t, r.features.normalize == "corpus") for t in trains]
        if r.target.labelled:
            target = DomainTensors(d["tx"], d["ty"], norms, trains,
                                   [to_device(sp.val, dev) for sp in splits])
        else:  # labels -1 (a loss that reads them fails loudly), no validation labels
            target = DomainTensors(d["tx"], torch.full_like(d["ty"], -1), norms, trains, None)
        source = None
        if self.source is not None:
            snorm = Standardizer.fit(d["sx"], d["s_train"], r.features.normalize == "corpus")
            source = DomainTensors(d["sx"], d["sy"], snorm, d["s_train"], d["s_held"])
        return target, source

    def _build(self, entry: StrategyEntry, cls, specs: list[RunSpec]
               ) -> tuple[Any, list[Any]]:
        """The pack's strategy (each run with its draw's options) and each run's training
        settings."""
        r = self.recipe
        applied = [sweep.apply(r, entry, s.hparams) for s in specs]
        backbone = dataclasses.replace(r.backbone, options=applied[0].backbone)
        factory = make_backbone_factory(dataclasses.replace(r, backbone=backbone),
                                        self.target.x.shape[1], self.target.stacked_layers)
        ctx = Context(factory, len(self.target.labels),
                      len(self.source.labels) if self.source else 0,
                      self.pretrained.state if self.pretrained else None, r.train.label_smoothing)
        if not r.target.labelled:
            ctx = ctx.unlabelled()
        strategy = build_pack(cls, ctx, [a.options for a in applied], [s.seed for s in specs])
        return strategy, [a.train for a in applied]

    def _halving(self, specs: list[RunSpec]) -> Halving | None:
        """Successive halving among the pack's draws of each (fold, seed), if the recipe asks."""
        rungs = sweep.rung_epochs(self.recipe)
        if not rungs:
            return None
        groups = {g: i for i, g in enumerate(dict.fromkeys(s.group for s in specs))}
        return Halving(rungs, [groups[s.group] for s in specs], [s.draw == 0 for s in specs])

    def _train_and_test(self, entry: StrategyEntry, cls, specs: list[RunSpec], on_epoch
                        ) -> list[RunResult]:
        """Per spec: what it measured (:func:`~transfer.grid.measure.score_pack`). A run's
        test-time adaptation variants share its training: each (protocol, fold, seed, draw)
        trains once. A strategy with neither source batches nor phases trains without the
        source at all (source-free)."""
        dev = self.device
        torch.set_num_threads(self.threads)
        runs = list({s.run: s for s in reversed(specs)}.values())[::-1]  # first spec per run
        target, source = self._domains(runs)
        if cls.needs_source and source is None:
            raise UserError(f"strategy {entry.label} needs a source corpus")
        strategy, cfgs = self._build(entry, cls, runs)
        source_free = not (strategy.uses_source_batches or strategy.phases())
        results = fit_runs(strategy, target, None if source_free else source, cfgs,
                           [s.seed for s in runs], dev, on_epoch, self._halving(runs))
        pack = len({s.run for s in specs})
        return score_pack(self, strategy, target, source, runs, results, specs,
                          [self.head(s, pack) for s in specs], source_free)


def export_best(out: Path, records: list[RunRecord], order: list[str]) -> list[Path]:
    """Per strategy, the run with the best validation UAR at its selected epoch becomes
    ``models/<strategy>.pt`` (the per-run packages are in ``models/runs/``). Each is copied
    to a temporary file and renamed into place, so an interrupted export (Ctrl-C, SIGTERM, a
    full disk) leaves the old package or none, never a partial one."""
    import shutil

    from transfer.common.cache import atomic_path

    written = []
    for label in order:
        best, best_score = None, -1.0
        for r in records:
            if r.strategy != label or not r.ok or not r.model:
                continue
            row = next((c for c in r.curves if c.epoch == r.best_epoch), None)
            score = row.val_uar if row is not None and row.val_uar is not None else 0.0
            if score > best_score and (out / r.model).is_file():
                best, best_score = r, score
        if best is not None:
            target = out / "models" / f"{label}.pt"
            with atomic_path(target) as tmp:
                shutil.copyfile(out / best.model, tmp)
            written.append(target)
    return written


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def precision(device: torch.device, amp: bool) -> str:
    """What a training on ``device`` with ``amp`` computes in: bf16 autocast runs on CUDA and
    on CPUs with native bf16 only (:func:`transfer.train.device.amp_enabled`)."""
    return "bf16 autocast (fp32 weights)" if amp_enabled(device, amp) else "fp32"


def environment(device: torch.device, recipe: Recipe | None = None,
                pretrained: bool = False) -> dict[str, Any]:
    """What a results folder records about where it ran: versions, the device and its model
    (CPU model name; GPU name), and the precision pretraining and training ran in, so that a
    table can be reproduced from its folder. ``pretrained``: whether the recipe pretrains."""
    import librosa
    import sklearn

    env = {**toolkit_info(), "python": sys.version.split()[0],
           "platform": platform.platform(), "torch": torch.__version__,
           "numpy": np.__version__, "librosa": librosa.__version__,
           "scikit_learn": sklearn.__version__, "device": str(device),
           "cpu_model": cpu_model(), "cpu_native_bf16": cpu_has_native_bf16(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if recipe is not None:
        env["precision"] = {"train": precision(device, recipe.train.amp)}
        if pretrained:  # a cached model keeps the precision it was trained in on this machine
            env["precision"]["pretrain"] = precision(device, recipe.pretrain.amp)
    return env


def spread(packs: list[list], jobs: int, cost: Callable[[list], float] = len,
           unit: Callable[[Any], Any] | None = None) -> list[list]:
    """The packs in the order ``jobs`` workers should take them: costliest first (each worker
    takes the next when it is free), and the ``len(packs) % jobs`` cheapest split into ``jobs``
    parts each (as far as they have runs), so that the workers finish together instead of one
    training the last pack alone; a single pack on two cores runs as two halves at once.
    ``unit``: runs with the same unit stay together when a pack is split.

    A run gives the same result in a pack of any size (up to float rounding), so splitting
    changes no result; on a CPU a pack's throughput hardly depends on its size (2-core AMD
    EPYC, TIM-Net, fp32, one thread: 200-213 segment-steps/s for 4, 8 and 15 runs per pack), so
    a split costs only the per-pack set-up.
    """
    order = sorted(packs, key=cost, reverse=True)
    r = len(order) % jobs
    if r == 0:
        return order
    whole, tail = order[:len(order) - r], order[len(order) - r:]
    parts = [part for pack in tail for part in split_evenly(pack, jobs, unit)]
    return whole + sorted(parts, key=cost, reverse=True)


def split_evenly(items: list, parts: int, unit: Callable[[Any], Any] | None = None) -> list[list]:
    """``items`` in at most ``parts`` consecutive parts whose sizes differ by at most one unit
    (``unit(item)``: consecutive items with the same unit stay in one part; default: every
    item is its own unit). No part is empty."""
    units: list[list] = []
    for item in items:
        if units and unit is not None and unit(units[-1][0]) == unit(item):
            units[-1].append(item)
        else:
            units.append([item])
    parts = max(1, min(parts, len(units)))
    return [[item for i in idx for item in units[i]]
            for idx in np.array_split(np.arange(len(units)), parts)]
