"""Shared fixtures: tiny corpora in the real layouts, generated per test session."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """transfer.run.main installs its SIGTERM handler; a test that calls it in-process must
    not leave it installed for the tests after it."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def one_line(err: str) -> str:
    """The single line of an error message (and that it is one, without a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session gets its own cache so tests never see a user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SER_TRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tests train tiny models: one thread is fastest for them, and with two OpenMP threads a
    busy machine (other jobs on the same cores) makes them up to 10x slower. Subprocesses
    started by tests inherit the setting."""
    import torch

    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _eager_kernels() -> None:
    """Tests run the eager CPU path: compiling the fused kernels (``backbones.kernels``) for
    every test's shapes would cost minutes. The tests that check the compiled kernels turn
    them on with the ``compiled_kernels`` fixture."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SER_TRANSFER_COMPILE", "0")
    yield
    mp.undo()


@pytest.fixture
def compiled_kernels():
    """The compiled CPU kernels on for one test (skipped without a C++ compiler)."""
    from backbones import kernels

    if not kernels.works():
        pytest.skip("torch.compile cannot build CPU kernels here (no C++ compiler or headers)")
    kernels.set_enabled(True)
    yield kernels
    kernels.set_enabled(None)


def write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


@pytest.fixture(scope="session")
def tiny_casia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transfer.data.synth import make_casia

    return make_casia(tmp_path_factory.mktemp("casia"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_modma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transfer.data.synth import make_modma

    return make_modma(tmp_path_factory.mktemp("modma"), "tiny", seed=0)


TINY_RECIPE = """
name = "{name}"
seeds = [0]
jobs = 1
[source]
corpus = "casia"
synthetic = "tiny"
segments = {{ seconds = 2.0, mode = "pad" }}
[target]
corpus = "modma"
synthetic = "tiny"
segments = {{ seconds = 2.0, mode = "window", overlap_s = 0.5 }}
[backbone]
options = {{ filters = 8, blocks = 3, split = 1, stem = "bn" }}
[pretrain]
epochs = 2
batch_size = 16
[train]
epochs = 2
batch_size = 8
[protocol]
name = "subject-kfold"
folds = 2
[diagnostics]
max_samples = 50
{strategies}
"""


def tiny_recipe(path: Path, strategies: list[str], name: str = "tiny", extra: str = "") -> Path:
    """A recipe on the tiny synthetic pair that trains in seconds."""
    blocks = "\n".join(f'[[strategies]]\nname = "{s}"\n' for s in strategies)
    path.write_text(TINY_RECIPE.format(name=name, strategies=blocks) + extra)
    return path


UNLABELLED_TARGET = """
[target]
corpus = "emodb"
synthetic = "tiny"
labelled = false
label_map = {{ anger = "angry", happiness = "happy", sadness = "sad" }}
keep = {emotions}
segments = {{ seconds = 2.0, mode = "pad" }}
"""


def tiny_unlabelled_recipe(path: Path, strategies: list[str], name: str = "tiny",
                           extra: str = "") -> Path:
    """The tiny recipe with the same-label-space pair: the synthetic CASIA-like source (its
    five emotions shared with EmoDB) and an unlabelled synthetic EmoDB-like target."""
    emotions = '["angry", "fear", "happy", "neutral", "sad"]'
    text = TINY_RECIPE.format(name=name, strategies="\n".join(
        f'[[strategies]]\nname = "{s}"\n' for s in strategies))
    head, rest = text.split("[target]", 1)
    rest = rest.split("[backbone]", 1)[1]
    source = head.replace('synthetic = "tiny"\n', f'synthetic = "tiny"\nkeep = {emotions}\n', 1)
    path.write_text(source + UNLABELLED_TARGET.format(emotions=emotions).lstrip("\n")
                    + "[backbone]" + rest + extra)
    return path


@pytest.fixture
def scoped_strategies():
    """Strategies registered during the test are gone after it: test-only strategies never
    reach the registry other tests read (``names()`` lists only the real ones)."""
    from transfer.train.strategies import base

    before = dict(base._REGISTRY)
    yield base.register
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def run_record(**fields):
    """A run record built from the fields a test cares about, read through
    ``RunRecord.from_dict`` like a line of ``runs.jsonl``; the head fields it leaves out get
    neutral values (and a finished run empty curves, confusion and metrics)."""
    from transfer.grid.records import RunRecord

    data = {"key": "run", "status": "ok", "strategy": "s", "fold": 0, "seed": 0,
            "protocol": "subject-kfold", "speaker_dependent": False}
    if fields.get("status", "ok") == "ok":
        data.update(metrics={}, curves=[], confusion=[], best_epoch=0)
    return RunRecord.from_dict({**data, **fields})


def pack_data(n: int = 120, f: int = 6, t: int = 24):
    """Small synthetic target (xt, y) and source tensors with three folds of different sizes,
    for the tests that compare a pack with its runs one by one."""
    import torch

    from transfer.train.tensors import DomainTensors, Standardizer

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    xt = torch.randn(n, f, t, generator=g)
    xt[:, 0] += y[:, None]
    ys = torch.randint(0, 3, (n,), generator=g)
    xs = torch.randn(n, f, t, generator=g)
    xs[:, 1] += ys[:, None]
    source = DomainTensors(xs, ys, Standardizer.fit(xs, torch.arange(90)), torch.arange(90),
                           torch.arange(90, n))
    # three folds of different sizes: the runs have different steps per epoch
    folds = [(torch.arange(0, 70), torch.arange(70, 90)), (torch.arange(20, 100),
             torch.arange(0, 20)), (torch.arange(30, 110), torch.arange(110, 120))]
    return xt, y, source, folds
