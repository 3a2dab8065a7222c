"""Benchmarks: feature extraction, training throughput, grid wall time, fraction of peak.

``python -m transfer.bench [--quick] [--json] [--device cpu|cuda] [--fp32] [--pack K]
[--grid-epochs E] [--grid-runs N] [--compile] [--jobs N] [--sweep-draws D] [--sweep-epochs E]
[--skip features train grid sweep]``

Writes ``results/bench/<timestamp>.json`` and ``.md`` (after every section, with
``"partial": true`` until the bench has finished) and prints a summary:

- feature extraction: seconds of audio per wall second on a synthetic MODMA-like corpus
  (44.1 kHz, resampled to 16 kHz, MFCC-39, 10-s windows), cache cold, one worker per core;
- training throughput of TIM-Net (39 x 313 segments, forward + backward) in this process:
  a reference loop written the way the research code trains (the plain unfused model, a
  DataLoader over per-segment tensors, batch 64, fp32, a host-to-device copy and a
  ``.item()`` per batch), this engine on one run, and this engine on ``--pack`` K runs packed
  into one model (segment-steps per second summed over runs); the speedups;
- the wall time of a grid on MODMA-sized synthetic features (52 subjects, ~3,500 segments of
  39 x 313; source 1,200 x 39 x 188): 7 strategies x 5 folds x 3 seeds x 60 epochs, packed,
  or in ``--quick`` mode a reduced grid that the output states; ``--grid-epochs E`` times E
  epochs of every pack, ``--grid-runs N`` the first N runs of every strategy, and the result
  is extrapolated (stated in the output);
- a sweep of one strategy (``--sweep-draws`` draws x folds): packed vs the same runs one by
  one, in draws trained per hour, and what successive halving saves and how often it stops
  the draw that full training selects;
- achieved fraction of the device's peak: model FLOPs per segment x segments per second /
  the peak FLOP/s of the device (stated; on a CPU from the instruction sets it reports).

Why one file (~630 lines): one command whose sections share the device, the peak and the
synthetic data helpers, and write one JSON/markdown report; each section is a function of its own.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.common.console import console, main_guard

PEAKS = {  # dense peak FLOP/s assumed per device kind (stated in the output)
    "H100": (989e12, "H100 SXM dense bf16 tensor-core peak, 989 TFLOP/s"),
    "H200": (989e12, "H200 dense bf16 tensor-core peak, 989 TFLOP/s"),
}


def cpu_flops_per_cycle(flags: set[str], bf16: bool = False) -> tuple[int, str]:
    """Peak FLOPs per cycle and core from the instruction sets the CPU reports (two FMA pipes
    assumed, as on current server cores): fp32 64 with AVX-512, 32 with AVX2 + FMA, 16 with
    AVX, 8 with SSE; with ``bf16``, 1024 with AMX-BF16 tiles and 128 with AVX512-BF16 dot
    products (else the fp32 figure: bf16 then runs no faster)."""
    if bf16 and "amx_bf16" in flags:
        return 1024, "AMX-BF16"
    if bf16 and "avx512_bf16" in flags:
        return 128, "AVX512-BF16"
    if "avx512f" in flags:
        return 64, "AVX-512 FMA"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 FMA"
    if "avx" in flags:
        return 16, "AVX"
    return 8, "SSE"


def _cpuinfo() -> tuple[float, set[str]]:
    ghz, flags = 3.0, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and ghz == 3.0:
                ghz = float(line.split(":")[1]) / 1000
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ghz, flags


def cpu_peak(bf16: bool = False) -> tuple[float, str]:
    """The CPU's dense peak FLOP/s: cores x GHz x FLOPs per cycle (:func:`cpu_flops_per_cycle`,
    fp32, or bf16 where the run used bf16)."""
    cores = os.cpu_count() or 1
    ghz, flags = _cpuinfo()
    per_cycle, isa = cpu_flops_per_cycle(flags, bf16)
    kind = "bf16" if bf16 and per_cycle > 64 else "fp32"
    return (cores * ghz * 1e9 * per_cycle,
            f"{cores} cores x {ghz:.2f} GHz x {per_cycle} {kind} FLOP/cycle ({isa})")


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16 (cpuinfo)."""
    from transfer.train.device import cpu_has_native_bf16

    name = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{name} ({os.cpu_count()} cores, {bf16})"


def device_peak(device: torch.device, bf16: bool = False) -> tuple[float, str]:
    """The peak FLOP/s the fraction of peak is taken against (stated in the output)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAKS.items():
            if key in name:
                return value
        return 989e12, f"{name}: assumed 989 TFLOP/s bf16 (H100-class)"
    return cpu_peak(bf16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- feature extraction ------------------------------------------------------------------------
def bench_features(size: str) -> dict[str, Any]:
    from transfer.data import synth
    from transfer.data.audio import SegmentSpec
    from transfer.data.corpora import build_manifest
    from transfer.data.features import FeatureSpec, load_features

    root = synth.cached("modma", size, 0)
    manifest = build_manifest("modma", root)
    audio_s = float(manifest.frame["duration_s"].sum())
    with tempfile.TemporaryDirectory() as tmp:  # a cold cache every time
        t0 = time.perf_counter()
        fs = load_features(manifest, SegmentSpec(seconds=10.0, mode="window"), FeatureSpec(),
                           root=Path(tmp), progress=False)
        seconds = time.perf_counter() - t0
    return {"feature_corpus": f"synthetic MODMA-like '{size}': {len(manifest.frame)} files, "
                              f"{manifest.frame['speaker'].nunique()} subjects, 44.1 kHz",
            "feature_audio_seconds": round(audio_s, 1), "feature_wall_seconds": round(seconds, 2),
            "feature_segments": int(fs.x.shape[0]),
            "feature_realtime_factor": round(audio_s / seconds, 1),
            "feature_workers": os.cpu_count()}


# --- training throughput -----------------------------------------------------------------------
def _model(runs: int = 1):
    import backbones

    return backbones.create("timnet", runs=runs, in_features=39, filters=39, blocks=8,
                            num_classes=2)


def reference_loop(x: torch.Tensor, y: torch.Tensor, device: torch.device, epochs: int) -> float:
    """The research code's way: the plain TIM-Net (two ``nn.Conv1d`` per block and direction),
    a DataLoader over per-segment tensors, batch 64, fp32, a copy to the device and a
    ``.item()`` per batch. Returns segments per second."""
    from torch.utils.data import DataLoader

    from backbones.reference import ReferenceTimNet

    torch.manual_seed(0)
    model = ReferenceTimNet(39, 39, 8, 3, 2).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.93, 0.98))
    loader = DataLoader(list(zip(x, y)), batch_size=64, shuffle=True, drop_last=True)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def epoch() -> int:
        n = 0
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = crit(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            n += len(xb)
        return n

    epoch()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    n = sum(epoch() for _ in range(epochs))
    _sync(device)
    return n / (time.perf_counter() - t0)


def engine_loop(x: torch.Tensor, y: torch.Tensor, device: torch.device, epochs: int,
                runs: int, compile_model: bool = False, amp: bool = True,
                cuda_graph: bool = True) -> float:
    """This engine on ``runs`` packed runs (each its own seed, all on the same segments, batch
    64 each): features resident on the device, batches by index, no per-step sync, the step
    captured in a CUDA graph on CUDA. Returns segment-steps per second summed over runs."""
    from transfer.common.config import TrainConfig
    from transfer.train.engine import fit_runs
    from transfer.train.packs import build_pack
    from transfer.train.strategies import Context
    from transfer.train.strategies.scratch import Scratch, ScratchOptions
    from transfer.train.tensors import DomainTensors, Standardizer

    xd, yd = x.to(device), y.to(device)
    idx = torch.arange(len(y), device=device)
    dom = DomainTensors(xd, yd, Standardizer.fit(xd, None, enabled=False), idx, None)
    seeds = list(range(runs))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-3, select="last", compile=compile_model,
                      amp=amp, cuda_graph=cuda_graph)
    ctx = Context(lambda k, r: _model(r), 2, label_smoothing=0.1)
    strategy = build_pack(Scratch, ctx, ScratchOptions(), seeds)
    fit_runs(strategy, dom, None, cfg, seeds, device)  # warm-up (and compilation)
    cfg.compile = False  # already compiled
    _sync(device)
    t0 = time.perf_counter()
    cfg.epochs = epochs
    fit_runs(strategy, dom, None, cfg, seeds, device)
    _sync(device)
    steps = len(y) // 64
    return runs * steps * 64 * epochs / (time.perf_counter() - t0)


def _engine_worker(args: tuple) -> float:
    """A worker process of :func:`engine_workers`: one single-threaded packed engine."""
    x, y, runs, amp, epochs = args
    torch.set_num_threads(1)
    return engine_loop(x, y, torch.device("cpu"), epochs, runs, False, amp)


def engine_workers(x: torch.Tensor, y: torch.Tensor, epochs: int, runs: int, workers: int,
                   amp: bool) -> float:
    """How the grid trains on a CPU (``jobs`` = cores, ``threads`` = 1): ``workers`` processes,
    each a single-threaded engine on its share of ``runs`` packed runs, at the same time.
    Each worker times its own epochs after its warm-up (the workers are alike, so the timed
    windows overlap); returns the summed segment-steps per second."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    shares = [len(part) for part in np.array_split(np.arange(runs), workers)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        rates = list(pool.map(_engine_worker, [(x, y, k, amp, epochs) for k in shares if k]))
    return sum(rates)


def flops_per_segment(device: torch.device) -> float:
    """The model's forward + backward FLOPs per segment, counted on the reference TIM-Net (the
    maths every implementation computes; torch's flop counter does not see the in-place
    ``baddbmm_`` of the fused model's shifted taps, so it would undercount that one)."""
    from torch.utils.flop_counter import FlopCounterMode

    from backbones.reference import ReferenceTimNet

    model = ReferenceTimNet(39, 39, 8, 3, 2).to(device)
    x = torch.randn(8, 39, 313, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def bench_training(device: torch.device, n: int, epochs: int, pack: int, compile_model: bool,
                   amp: bool = True, repeats: int = 2, workers: int = 1,
                   report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Segment-steps per second of the reference loop, the engine on one run, ``pack`` runs
    packed in one process and (CPU, ``workers`` > 1) packed over worker processes; each
    measured ``repeats`` times, alternating, best kept. ``report`` hears every measurement as
    it is taken (a bench that is stopped still leaves them in its log)."""
    from transfer.common.allocator import retain_freed_memory

    retained = retain_freed_memory()  # as the engine does on a CPU; for both loops alike
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 39, 313, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    refs, ones, packs, spread = [], [], [], []
    def measure(into: list[float], name: str, value: float) -> None:
        into.append(value)
        if report is not None:
            report(f"{name}: {value:.1f} segment-steps/s")

    for _ in range(repeats):  # alternate, keep each one's best: robust to a busy machine
        measure(refs, "reference loop", reference_loop(x, y, device, epochs))
        measure(ones, "engine, one run", engine_loop(x, y, device, epochs, 1, compile_model, amp))
        measure(packs, f"engine, {pack} packed runs",
                engine_loop(x, y, device, epochs, pack, compile_model, amp))
        if workers > 1 and device.type == "cpu":
            measure(spread, f"engine, {pack} packed runs over {workers} workers",
                    engine_workers(x, y, epochs, pack, workers, amp))
    ref, one, packed = max(refs), max(ones), max(packs)
    flops = flops_per_segment(device)
    from backbones import kernels
    from transfer.train.device import amp_enabled

    peak, peak_note = device_peak(device, bf16=amp_enabled(device, amp))

    return {"train_segments": n, "train_epochs_timed": epochs,
            "precision": "bf16 autocast" if amp_enabled(device, amp) else "fp32",
            "reference_segments_per_s": round(ref, 1), "engine_segments_per_s": round(one, 1),
            "packed_runs": pack, "packed_segments_per_s": round(packed, 1),
            "train_speedup_vs_reference": round(one / ref, 2),
            "packed_speedup_vs_reference": round(packed / ref, 2),
            "model_gflops_per_segment_fwd_bwd": round(flops / 1e9, 4),
            "peak_flops": peak, "peak_assumption": peak_note,
            "achieved_fraction_of_peak_one_run": round(flops * one / peak, 4),
            "achieved_fraction_of_peak_packed": round(flops * packed / peak, 4),
            "compile": compile_model, "glibc_retains_freed_memory": retained,
            "cpu_kernels": (("compiled" if kernels.available(torch.device("cpu")) else "eager")
                            if device.type == "cpu" else None),
            **({"workers": workers, "packed_workers_segments_per_s": round(max(spread), 1),
                "packed_workers_speedup_vs_reference": round(max(spread) / ref, 2)}
               if spread else {})}


def profile_step(device: torch.device, top: int = 8) -> list[dict[str, Any]]:
    """Where a training step's time goes (torch profiler, self time by op)."""
    from torch.profiler import ProfilerActivity, profile

    model = _model().to(device)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(64, 39, 313, device=device)
    y = torch.randint(0, 2, (64,), device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with profile(activities=acts) as prof:
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    return [{"op": e.key, "share": round(getattr(e, key) / total, 3)} for e in events[:top]]


# --- grid --------------------------------------------------------------------------------------
def synthetic_domains(subjects: int, per_subject: int, source_n: int, seed: int = 0):
    """MODMA-like target and CASIA-like source features with a weak class signal."""
    from transfer.data import Domain

    rng = np.random.default_rng(seed)
    n_mdd = round(subjects * 23 / 52)
    groups = np.repeat([f"{i:08d}" for i in range(subjects)], per_subject)
    y = np.repeat((np.arange(subjects) >= n_mdd).astype(np.int64), per_subject)
    x = rng.standard_normal((len(y), 39, 313), dtype=np.float32)
    x[:, 0] += (0.5 * (1 - y))[:, None]
    target = Domain("modma-synthetic", x, y, groups, groups.copy(), ["MDD", "HC"], ["bench-t"],
                    "MDD")
    ys = rng.integers(0, 6, source_n)
    xs = rng.standard_normal((source_n, 39, 188), dtype=np.float32)
    xs[:, 1] += ys[:, None] * 0.3
    spk = np.array([f"spk{i % 4}" for i in range(source_n)])
    source = Domain("casia-synthetic", xs, ys, spk, spk.copy(),
                    ["angry", "fear", "happy", "neutral", "sad", "surprise"], ["bench-s"])
    return target, source


def first_runs(plan: list, n: int) -> list:
    """The first ``n`` runs (plan order) of every strategy entry of a grid's plan."""
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for spec in plan:
        seen[spec.strategy] += 1
        if seen[spec.strategy] <= n:
            out.append(spec)
    return out


def bench_grid(device: torch.device, quick: bool, jobs: int | None, epochs_slice: int = 0,
               amp: bool = True, pack: int = 0, runs_slice: int = 0,
               report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time a grid (pretraining excluded), whole or as a slice that is extrapolated;
    ``report`` hears each timing as it is taken.

    A slice: ``epochs_slice`` E > 0 epochs of every run, and/or ``runs_slice`` N > 0 runs of
    every strategy (the first N, packed as the grid packs them). After a warm-up of one epoch
    it is timed twice, for 1 and for 1 + E epochs (E = the grid's epochs when only runs are
    sliced): the difference is the cost of E epochs, the rest the setup (workers, packs,
    compilation or graph capture, first steps). The grid is then the setup plus its epochs at
    the measured cost per epoch, scaled by its runs over the slice's: right on a CPU, where a
    pack's throughput hardly depends on its size; an upper bound on a GPU, where a larger
    pack costs less per run. A pack's epoch costs about the same all along (no early stopping
    here; an alignment phase every few epochs is where the slice's epochs fall)."""
    from transfer.evaluate.protocols import make_splits
    from transfer.grid.executors import execute_all
    from transfer.grid.experiment import Experiment
    from transfer.grid.recipe import parse_recipe
    from transfer.train.pretrain import pretrain

    strategies = ["scratch", "freeze", "finetune", "joint", "dann", "mmd_ae", "ddg"]
    if quick:  # all strategies, fewer folds, seeds, epochs and segments
        folds, seeds, epochs, subjects, per = 2, [0], 3, 52, 8
    else:
        folds, seeds, epochs, subjects, per = 5, [0, 1, 2], 60, 52, 67

    def recipe(train_epochs: int):
        return parse_recipe({
            "name": "bench-grid", "seeds": seeds, "target": {"corpus": "modma"},
            "source": {"corpus": "casia"}, "backbone": {"options": {"split": 3, "stem": "bn"}},
            "pretrain": {"epochs": 2}, "train": {"epochs": train_epochs, "batch_size": 32,
                                                  "amp": amp, "pack": pack},
            "protocol": {"folds": folds}, "diagnostics": {"enabled": False},
            "strategies": [{"name": s} for s in strategies]})

    sliced = epochs_slice > 0 or runs_slice > 0
    timed = min(epochs_slice, epochs) if epochs_slice > 0 else epochs
    target, source = synthetic_domains(subjects, per, 240 if quick else 1200)
    with tempfile.TemporaryDirectory() as tmp:
        pre = pretrain(recipe(epochs), source, device, root=Path(tmp))
        splits = make_splits(recipe(epochs).protocol, target.groups, target.y, seeds)

        def run(train_epochs: int) -> tuple[float, Experiment, list]:
            exp = Experiment.from_domains(recipe(train_epochs), target, source, pre, splits,
                                          device=device, progress=False)
            plan = first_runs(exp.plan(), runs_slice) if runs_slice > 0 else exp.plan()
            _sync(device)
            t0 = time.perf_counter()
            execute_all(exp, plan, Path(tmp) / f"runs-{train_epochs}.jsonl", progress=False,
                        jobs=jobs)
            _sync(device)
            seconds = time.perf_counter() - t0
            if report is not None:
                report(f"{len(plan)} runs x {train_epochs} epoch(s): {seconds:.1f} s")
            return seconds, exp, plan

        if sliced:
            run(1)  # warm-up: compiled kernels into inductor's on-disk cache, as a grid finds them
            one, _, _ = run(1)
            seconds, exp, plan = run(1 + timed)
        else:
            seconds, exp, plan = run(epochs)
        full = exp.plan()
        packs = exp.packs(full)
    grid = (f"{len(strategies)} strategies x {folds} folds x {len(seeds)} seed(s) x {epochs} "
            f"epochs on {subjects} subjects x {per} segments of 39 x 313")
    out = {"grid": grid, "grid_runs": len(full), "grid_packs": len(packs),
           "grid_jobs": jobs or exp.recipe.jobs, "grid_full": not quick}
    if not sliced:
        return {**out, "grid_seconds": round(seconds, 1), "grid_extrapolated": False}
    setup, per_epoch, total = extrapolate(one, seconds, timed, epochs, len(full) / len(plan))
    return {**out, "grid_runs_timed": len(plan), "grid_epochs_timed": f"1 and {1 + timed}",
            "grid_seconds_timed": f"{one:.1f} and {seconds:.1f}",
            "grid_slice_setup_seconds": round(setup, 1),
            "grid_slice_seconds_per_epoch": round(per_epoch, 2),
            "grid_seconds": round(total, 1), "grid_extrapolated": True}


def bench_sweep(device: torch.device, quick: bool, draws: int = 8, epochs: int = 0,
                 strategy: str = "finetune", report: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """A sweep of one strategy on MODMA-sized synthetic features, three ways on the same device
    in this process: the draws packed (x folds, as the grid packs them), the same runs one by
    one (``train.pack = 1``), and packed with successive halving. Reports draws trained per
    hour (draw x fold runs of the timed epochs, per hour), the packed speedup, what halving
    saves and how often it stopped the draw that full training selects."""
    from transfer.evaluate.protocols import make_splits
    from transfer.grid.executors import execute_all
    from transfer.grid.experiment import Experiment
    from transfer.grid.recipe import parse_recipe
    from transfer.grid.records import read_records
    from transfer.report.sweep import selected
    from transfer.train.pretrain import pretrain

    folds, subjects, per = (2, 52, 8) if quick else (5, 52, 67)
    epochs = epochs or (3 if quick else 6)

    def recipe(pack: int, halving: bool):
        return parse_recipe({
            "name": "bench-sweep", "seeds": [0], "target": {"corpus": "modma"},
            "source": {"corpus": "casia"}, "backbone": {"options": {"split": 3, "stem": "bn"}},
            "pretrain": {"epochs": 2}, "train": {"epochs": epochs, "batch_size": 32,
                                                  "pack": pack},
            "protocol": {"folds": folds}, "diagnostics": {"enabled": False},
            "sweep": {"draws": draws, "halving": halving, "rungs": [0.34]},
            "strategies": [{"name": strategy}]})

    target, source = synthetic_domains(subjects, per, 240 if quick else 1200)
    out: dict[str, Any] = {"sweep": f"{strategy}: {draws} draws x {folds} folds x {epochs} "
                                    f"epochs on {subjects} subjects x {per} segments"}
    from transfer.train.strategies import get_strategy

    with tempfile.TemporaryDirectory() as tmp:
        pre = (pretrain(recipe(0, False), source, device, root=Path(tmp))
               if get_strategy(strategy).needs_source else None)
        splits = make_splits(recipe(0, False).protocol, target.groups, target.y, [0])
        timings, records = {}, {}
        for name, pack, halving in (("packed", 0, False), ("one_by_one", 1, False),
                                    ("halving", 0, True)):
            exp = Experiment.from_domains(recipe(pack, halving), target, source, pre, splits,
                                          device=device, progress=False)
            path = Path(tmp) / f"{name}.jsonl"
            _sync(device)
            t0 = time.perf_counter()
            execute_all(exp, exp.plan(), path, progress=False, jobs=1)
            _sync(device)
            timings[name] = time.perf_counter() - t0
            records[name] = read_records(path)
            runs = len(records[name])
            if report is not None:
                report(f"sweep {name}: {runs} runs in {timings[name]:.1f} s "
                       f"({runs / timings[name] * 3600:.0f} draws per hour)")
    full = {(r.fold, r.seed): r.draw for r in selected(records["packed"])}
    stopped = {(r.fold, r.seed, r.draw) for r in records["halving"] if r.stopped == "halving"}
    dropped = sum(1 for (f, s), d in full.items() if (f, s, d) in stopped)
    runs = len(records["packed"])
    return {**out, "sweep_runs": runs,
            "sweep_draws_per_hour_packed": round(runs / timings["packed"] * 3600),
            "sweep_draws_per_hour_one_by_one": round(runs / timings["one_by_one"] * 3600),
            "sweep_packed_speedup": round(timings["one_by_one"] / timings["packed"], 2),
            "sweep_halving_seconds": round(timings["halving"], 1),
            "sweep_halving_saving": round(1 - timings["halving"] / timings["packed"], 3),
            "sweep_halving_dropped_the_selected_draw": f"{dropped} of {len(full)} folds"}


def extrapolate(one: float, longer: float, extra_epochs: int, epochs: int, runs_factor: float
                ) -> tuple[float, float, float]:
    """A slice timed for 1 epoch (``one`` s) and for 1 + ``extra_epochs`` (``longer`` s) ->
    (setup s, s per epoch, the grid's s for ``epochs`` epochs and ``runs_factor`` times the
    slice's runs). Noise that makes the longer run no slower gives 0 s per epoch, not less."""
    per_epoch = max(longer - one, 0.0) / extra_epochs
    setup = max(one - per_epoch, 0.0)
    return setup, per_epoch, setup + per_epoch * epochs * runs_factor


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["# ser-transfer benchmark", "", f"{result['timestamp']} on {result['device']}", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.items() if k not in ("profile", "timestamp")]
    if result.get("profile"):
        lines += ["", "Where a training step's time goes:", "", "| op | share |", "|---|---|"]
        lines += [f"| {p['op']} | {p['share']:.1%} |" for p in result["profile"]]
    return "\n".join(lines) + "\n"


def _sections(args: argparse.Namespace, device: torch.device, result: dict[str, Any],
              save: Callable[[bool], None], heard: Callable[[str], None]) -> None:
    """Run the bench's sections (all but ``--skip``), saving after each."""
    if "features" not in args.skip:
        console.print("feature extraction ...")
        result.update(bench_features("medium" if args.quick else "full"))
        save(True)
    if "train" not in args.skip:
        console.print("training throughput ...")
        n = 256 if args.quick and device.type == "cpu" else 2048
        from transfer.grid.executors import default_jobs

        workers = args.workers or default_jobs(device)
        result.update(bench_training(device, n, 1 if args.quick else 3, args.pack, args.compile,
                                     amp=not args.fp32, workers=workers, report=heard))
        save(True)
        result["profile"] = profile_step(device)
        save(True)
    if "grid" not in args.skip:
        console.print("grid ...")
        result.update(bench_grid(device, args.quick, args.jobs, args.grid_epochs,
                                 amp=not args.fp32, runs_slice=args.grid_runs, report=heard))
        save(True)
    if "sweep" not in args.skip:
        console.print("sweep ...")
        result.update(bench_sweep(device, args.quick, args.sweep_draws, args.sweep_epochs,
                                  report=heard))


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and a reduced grid")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    parser.add_argument("--jobs", type=int, help="worker processes in the grid")
    parser.add_argument("--pack", type=int, default=15,
                        help="runs packed into one model in the packed training measure")
    parser.add_argument("--grid-epochs", type=int, default=0, metavar="E",
                        help="time every pack of the grid for E epochs and extrapolate")
    parser.add_argument("--grid-runs", type=int, default=0, metavar="N",
                        help="time only the first N runs of every strategy and extrapolate "
                             "(a CPU: the full grid's epoch alone takes longer than 10 minutes)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (train.amp=false)")
    parser.add_argument("--workers", type=int, default=0,
                        help="CPU: also time the packed runs spread over this many single-"
                             "threaded worker processes, as the grid runs them (0 = one per "
                             "core; 1 = off)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--sweep-draws", type=int, default=8, metavar="D",
                        help="draws of the sweep measure (one strategy, packed vs one by one)")
    parser.add_argument("--sweep-epochs", type=int, default=0, metavar="E",
                        help="epochs of every run of the sweep measure (default 6; quick 3)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["features", "train", "grid", "sweep"])
    args = parser.parse_args(argv)
    if args.grid_epochs < 0 or args.grid_runs < 0:
        parser.error("--grid-epochs and --grid-runs take a positive number (0: the whole grid)")
    if args.sweep_draws < 2 or args.sweep_epochs < 0:
        parser.error("--sweep-draws takes 2 or more, --sweep-epochs a positive number")
    from transfer.train.device import pick_device

    device = pick_device(args.device or "auto")
    result: dict[str, Any] = {"timestamp": dt.datetime.now().isoformat(timespec="seconds"),
                              "device": cpu_model() if device.type == "cpu"
                              else torch.cuda.get_device_name(device),
                              "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "quick": args.quick}
    out = Path(args.results_dir) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")

    def save(partial: bool) -> None:  # after every section: a stopped bench keeps what it had
        saved = {**result, "partial": True} if partial else result
        (out / f"{stamp}.json").write_text(json.dumps(saved, indent=2))
        (out / f"{stamp}.md").write_text(to_markdown(saved))

    def heard(message: str) -> None:
        console.print(f"  {message}")

    _sections(args, device, result, save, heard)
    save(partial=False)
    if args.json:
        print(json.dumps(result))
    else:
        print(to_markdown(result))
    console.print(f"written to {out / stamp}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
