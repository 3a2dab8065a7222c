"""Fault injection (issue 16): kill -9, damaged caches, racing processes, read-only and full
disks, code-running pickles, failed starts, and the wheel. Tiny data; seconds per test."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

import transfer.common.cache
from transfer import REPO_ROOT, UserError
from transfer.common.cache import file_sha256
from transfer.data import load_domain
from transfer.data.audio import SegmentSpec
from transfer.data.corpora import build_manifest
from transfer.data.features import FeatureSpec, load_features
from transfer.grid.folder import toolkit_info
from transfer.grid.recipe import load_recipe
from transfer.grid.records import read_records
from transfer.run import run_recipe
from transfer.train.pretrain import pretrain

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses /proc and POSIX signals")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, results folder) of one uninterrupted tiny grid (scratch, 2 folds = 2 runs);
    tests that change a results folder work on a copy."""
    tmp = tmp_path_factory.mktemp("finished")
    path = tiny_recipe(tmp / "r.toml", ["scratch"])
    out, _, failed = run_recipe(load_recipe(path), results_dir=tmp / "res", progress=False)
    assert failed == 0 and len(read_records(out / "runs.jsonl")) == 2
    return path, out


def _copy(out: Path, results: Path) -> Path:
    dest = results / out.parent.name / out.name
    shutil.copytree(out, dest)
    return dest


# --- kill -9 in the middle of a grid ------------------------------------------------------------

@linux_only
def test_kill_9_mid_grid_then_resume_loses_no_finished_run(finished, tmp_path):
    path, reference = finished
    # one run per pack, so that records arrive one at a time and the kill can fall between
    # them (a packed grid records its runs together); the table is the packed one's
    cmd = [sys.executable, "-m", "transfer.run", str(path), "--results-dir",
           str(tmp_path / "res"), "--quiet", "--set", "train.pack=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    records, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "res").glob("tiny/*/runs.jsonl"))
        if found and read_records(found[0]):
            records = found[0]
            break
        time.sleep(0.01)
    assert records is not None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = read_records(records)
    if len(before) == 2:
        pytest.skip("the grid finished before SIGKILL arrived")
    text = records.read_text()
    complete = text[:text.rfind("\n") + 1]  # the finished records (a torn line may follow)
    out = records.parent
    assert (out / "recipe.json").is_file() and not list(out.rglob("*.tmp"))
    out2, _, failed = run_recipe(load_recipe(path, ["train.pack=1"]),
                                 results_dir=tmp_path / "res", resume=out,
                                 progress=False)  # what --resume does, in this process
    assert out2 == out and failed == 0
    after = read_records(records)
    assert records.read_text().startswith(complete)  # finished records untouched
    keys = [r.key for r in after]
    lost = sum(keys.count(r.key) > 1 for r in before)  # finished runs that ran again
    assert lost == 0 and len(after) == 2 and len(set(keys)) == 2
    assert (out / "table.csv").read_bytes() == (reference / "table.csv").read_bytes()


# --- damaged caches -----------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))  # same size, in place


def _damage_lines(err: str, path: Path) -> list[str]:
    return [line for line in err.splitlines() if "is damaged" in line and path.name in line]


@pytest.mark.parametrize("damage", [_truncate, _random_bytes])
def test_damaged_features_cache_is_reported_in_one_line_and_rebuilt(tiny_casia, tmp_path, capsys,
                                                                    damage):
    manifest = build_manifest("casia", tiny_casia)
    seg, feat = SegmentSpec(seconds=1.0, mode="pad"), FeatureSpec()
    first = load_features(manifest, seg, feat, root=tmp_path)
    (path,) = (tmp_path / "features").glob("*.npz")
    assert path.name.endswith(f".{file_sha256(path)[:16]}.npz")  # the checksum is in the name
    damage(path)
    capsys.readouterr()
    again = load_features(manifest, seg, feat, root=tmp_path)
    (line,) = _damage_lines(capsys.readouterr().err, path)
    assert "checksum mismatch" in line and "rebuilding it" in line
    assert not again.cache_hit and np.array_equal(again.x, first.x)
    assert load_features(manifest, seg, feat, root=tmp_path).cache_hit
    assert len(list((tmp_path / "features").glob("*.npz"))) == 1


@pytest.fixture(scope="module")
def source_domain():
    recipe = load_recipe(tiny_recipe(Path(os.environ["SER_TRANSFER_CACHE"]) / "faults.toml",
                                     ["freeze"]))
    return recipe, load_domain(recipe.source, recipe.features, progress=False)


def _resave_same_size(path: Path) -> None:
    """A valid model file overwritten in place with other weights of the same size."""
    blob = torch.load(path, weights_only=True)
    next(v for v in blob["state"].values() if v.is_floating_point()).add_(1.0)
    with open(path, "wb") as fh:
        torch.save(blob, fh)


@pytest.mark.parametrize("damage", [_truncate, _random_bytes, _resave_same_size])
def test_damaged_pretrained_cache_is_reported_and_retrained(source_domain, tmp_path, capsys,
                                                           damage):
    recipe, domain = source_domain
    first = pretrain(recipe, domain, torch.device("cpu"), root=tmp_path)
    (path,) = (tmp_path / "pretrained").glob("*.pt")
    size = path.stat().st_size
    damage(path)
    if damage is _resave_same_size:
        assert path.stat().st_size == size  # same size: only the checksum can tell
    capsys.readouterr()
    again = pretrain(recipe, domain, torch.device("cpu"), root=tmp_path)
    (line,) = _damage_lines(capsys.readouterr().err, path)
    assert "checksum mismatch" in line
    timing = "source_seconds"
    assert not again.cache_hit and again.metrics.pop(timing) and first.metrics.pop(timing)
    assert again.metrics == first.metrics
    for k, v in first.state.items():
        assert torch.equal(v, again.state[k]), k
    assert pretrain(recipe, domain, torch.device("cpu"), root=tmp_path).cache_hit


# --- two processes, one cache entry ---------------------------------------------------------------

RACER = """
import hashlib, json, sys, time
from pathlib import Path
from transfer.data.cards import load_card
from transfer.data.corpora import build_manifest
from transfer.data.domain import corpus_root, feature_spec, segment_spec
from transfer.data.features import load_features
from transfer.grid.recipe import load_recipe
from transfer.grid.experiment import Experiment
recipe = load_recipe(sys.argv[1])
card = load_card(recipe.target.corpus)
manifest = build_manifest(card, corpus_root(recipe.target, card))
Path(sys.argv[3]).touch()
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
seg = segment_spec(recipe.target, card, recipe.features.sample_rate)
fs = load_features(manifest, seg, feature_spec(recipe.features), progress=False)
exp = Experiment(recipe, progress=False).load()
state = hashlib.sha256(b"".join(v.numpy().tobytes() for v in exp.pretrained.state.values()))
print(json.dumps({"extracted": not fs.cache_hit, "trained": not exp.pretrained.cache_hit,
                  "state": state.hexdigest(), "target": hashlib.sha256(fs.x.tobytes()).hexdigest(),
                  "source": hashlib.sha256(exp.source.x.tobytes()).hexdigest()}))
"""


def test_two_processes_filling_the_same_cache_entries_agree(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", ["freeze"])
    shared = transfer.common.cache.cache_dir()
    cache = tmp_path / "cache"  # empty, but for the synthetic corpora (shared, read-only here)
    cache.mkdir()
    (shared / "synth").mkdir(exist_ok=True)
    (cache / "synth").symlink_to(shared / "synth")
    env = {**os.environ, "SER_TRANSFER_CACHE": str(cache)}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(recipe), str(go),
                               str(tmp_path / f"ready{i}")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 300
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()  # both need the same features and the same pretrained model now
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    # each entry built once, by one of them; the other waited and loaded it
    assert sorted(r["extracted"] for r in results) == [False, True]
    assert sorted(r["trained"] for r in results) == [False, True]
    for key in ("state", "target", "source"):
        assert results[0][key] == results[1][key], key
    assert len(list((cache / "pretrained").glob("*.pt"))) == 1
    assert len(list((cache / "features").glob("*.npz"))) == 2  # source and target, once each
    assert not list(cache.rglob("*.tmp"))


# --- read-only results folder and full disk -------------------------------------------------------

class _ReadOnly:
    """Writes under ``root`` fail with EROFS (chmod alone does not stop root, so the OS calls
    that create or open files for writing are patched too)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root.resolve())
        real_open, real_mkdir = os.open, os.mkdir

        def guarded_open(path, flags, *args, **kw):
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
            if writing and self._under(path, kw.get("dir_fd")):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kw)

        def guarded_mkdir(path, *args, **kw):
            if self._under(path, kw.get("dir_fd")):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kw)

        monkeypatch.setattr(os, "open", guarded_open)
        monkeypatch.setattr(os, "mkdir", guarded_mkdir)
        self.modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")] if p.is_dir()}
        for p in self.modes:
            p.chmod(0o555)

    def _under(self, path, dir_fd) -> bool:
        if dir_fd is not None:
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        full = os.path.abspath(os.fspath(path))
        return full == self.root or full.startswith(self.root + os.sep)

    def undo(self) -> None:
        for p, mode in self.modes.items():
            p.chmod(stat.S_IMODE(mode))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_results_files_are_readable_by_others(finished):
    _, out = finished
    umask = os.umask(0)
    os.umask(umask)
    for name in ("recipe.json", "environment.json", "summary.json", "runs.jsonl", "table.csv",
                 "table.md", "figures/curves_scratch.png"):  # not 0600, as mkstemp makes them
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


@linux_only
def test_read_only_results_folder_is_a_clear_error_and_keeps_records(finished, tmp_path,
                                                                     monkeypatch, capsys):
    from transfer.run import main

    path, original = finished
    out = _copy(original, tmp_path / "res")
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text(lines[0] + "\n")  # one run left to do
    before = _files(out)
    ro = _ReadOnly(tmp_path / "res", monkeypatch)
    try:
        code = main([str(path), "--results-dir", str(tmp_path / "res"), "--quiet", "--resume",
                     str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert f"cannot write results to {out}" in err and "not writable" in err
        code = main([str(path), "--results-dir", str(tmp_path / "res"), "--quiet"])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2 and "not writable (Read-only file system); choose another " \
                             "--results-dir" in err
    finally:
        ro.undo()
    assert _files(out) == before  # earlier records (and everything else) intact
    assert [p.name for p in (tmp_path / "res" / "tiny").iterdir()] == [out.name]


class _FullDisk:
    """``transfer.common.cache``'s view of ``os`` once ``after`` records are durable: the disk under
    ``root`` is full, so a write stores part of its bytes, then fails with ENOSPC, and fsync
    fails with ENOSPC (as with delayed allocation)."""

    def __init__(self, root: Path, after: int) -> None:
        self.root, self.after, self.appends, self.full = str(root.resolve()), after, 0, False

    def _under(self, fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full and self._under(fd):
            if len(data) > 1:
                return os.write(fd, bytes(data)[: len(data) // 2])  # a short write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def fsync(self, fd):
        if self.full and self._under(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("runs.jsonl"):
            self.appends += 1
            self.full = self.appends >= self.after


@linux_only
def test_full_disk_is_a_clear_error_and_keeps_earlier_records(tmp_path, monkeypatch):
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    recipe = load_recipe(path)
    disk = _FullDisk(tmp_path / "res", after=1)
    monkeypatch.setattr(transfer.common.cache, "os", disk)
    with pytest.raises(UserError) as info:
        run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    monkeypatch.undo()
    (out,) = (tmp_path / "res" / "tiny").iterdir()
    msg = str(info.value)
    assert "No space left on device" in msg and "the 1 finished run(s)" in msg
    assert f"--resume {out}" in msg
    text = (out / "runs.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 1  # no torn second line
    assert all(json.loads(line)["status"] == "ok" for line in text.splitlines())
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no table.csv.tmp
    out2, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", resume=out,
                                     progress=False)
    assert out2 == out and failed == 0 and list(table["runs"]) == [2]
    assert (out / "runs.jsonl").read_text().startswith(text)


# --- pickles that run code on load ------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_code_running_pickle_is_refused_by_predict(tmp_path, tiny_modma):
    from transfer.train.package import load_package

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"format": "ser-transfer-model", "state": _Evil(marker)}, evil)
    assert pickle.loads(pickle.dumps(_Evil(marker))) is None and marker.exists()  # it does run
    marker.unlink()
    with pytest.raises(UserError, match="refused without running them"):
        load_package(evil)
    res = subprocess.run([sys.executable, "-m", "transfer.predict", str(evil),
                          str(next(tiny_modma.glob("*/*.wav")))], capture_output=True, text=True)
    assert res.returncode == 2 and "not a ser-transfer model package" in res.stderr
    assert "Traceback" not in res.stderr and not marker.exists()


def test_code_running_pickle_in_the_model_cache_is_refused_by_resume(tmp_path, capsys):
    from transfer.grid.experiment import Experiment
    from transfer.run import main

    marker = tmp_path / "pwned"
    path = tiny_recipe(tmp_path / "r.toml", ["freeze"])
    out, _, _ = run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    key = Experiment(load_recipe(path), progress=False).load().pretrained.key
    (entry,) = (transfer.common.cache.cache_dir() / "pretrained").glob(f"{key}.*.pt")
    entry.unlink()
    torch.save({"state": _Evil(marker), "norm": {}, "metrics": {}}, tmp_path / "evil.pt")
    planted = entry.with_name(f"{key}.{file_sha256(tmp_path / 'evil.pt')[:16]}.pt")
    shutil.copy(tmp_path / "evil.pt", planted)  # its checksum is right: only the load can refuse
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text(lines[0] + "\n")
    capsys.readouterr()
    assert main([str(path), "--results-dir", str(tmp_path / "res"), "--quiet", "--resume",
                 str(out)]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "is damaged" in ln]
    assert planted.name in line and "cannot be loaded: UnpicklingError: Weights only load" in line
    assert not marker.exists() and not planted.exists()
    (rebuilt,) = (transfer.common.cache.cache_dir() / "pretrained").glob(f"{key}.*.pt")
    assert torch.load(rebuilt, weights_only=True)["state"]  # retrained and stored
    assert len(read_records(out / "runs.jsonl")) == 2


# --- nothing half-written -------------------------------------------------------------------------

def test_run_failing_before_its_first_record_leaves_no_folder(tmp_path, monkeypatch, capsys):
    import transfer.grid.executors
    from transfer.run import main

    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    assert main([str(path), "--results-dir", str(tmp_path / "res"), "--quiet", "--set",
                 "protocol.folds=5"]) == 2
    assert "subject-kfold with 5 folds needs" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()  # the plan is made before the folder

    def interrupted(*args, **kw):
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM) before any run finished

    monkeypatch.setattr(transfer.grid.executors, "execute_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    assert not (tmp_path / "res").exists()
    (tmp_path / "res").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), results_dir=tmp_path / "res", progress=False)
    assert list((tmp_path / "res").iterdir()) == []  # only what the run made is removed


def test_resume_refuses_another_recipe_and_tables_only_planned_runs(finished, tmp_path, capsys):
    from transfer.run import main

    path, original = finished
    out = _copy(original, tmp_path / "res")
    recipe_json = (out / "recipe.json").read_text()
    args = [str(path), "--results-dir", str(tmp_path / "res"), "--quiet", "--resume", str(out)]
    assert main(args + ["--set", "train.epochs=3", "--set", "train.lr=0.01"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was run with a different recipe" in err and "Traceback" not in err
    assert "train.epochs (was 2, now 3); train.lr (was 0.001, now 0.01)" in err
    assert main(args + ["--set", "seeds=[0, 1]"]) == 2
    assert "seeds (was [0], now [0, 1])" in capsys.readouterr().err
    assert (out / "recipe.json").read_text() == recipe_json  # not overwritten
    foreign = {**read_records(out / "runs.jsonl")[0].to_dict(), "key": "from-another-recipe"}
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(foreign) + "\n")
    _, table, failed = run_recipe(load_recipe(path, ["jobs=2"]), results_dir=tmp_path / "res",
                                  resume=out, progress=False)  # jobs does not change results
    assert failed == 0 and list(table["runs"]) == [2]  # the foreign record is not counted


def test_environment_records_version_install_location_and_own_commit():
    info = toolkit_info()
    assert info["ser_transfer"] and info["install_location"] == str(REPO_ROOT / "transfer")
    if (REPO_ROOT / ".git").exists() and shutil.which("git"):
        assert len(info["git_commit"]) == 40 and isinstance(info["git_dirty"], bool)


def test_wheel_ships_the_cards_and_an_installed_copy_finds_them(tmp_path):
    """A non-editable install has no datasets/ folder next to it: the cards ship in the wheel."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("transfer", "backbones", "datasets"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    isolation = ["--no-build-isolation"] if _has_setuptools() else []  # else: fetched
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("ser_transfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    cards = sorted(p.name for p in (REPO_ROOT / "datasets").glob("*.toml"))
    assert {f"transfer/_cards/{c}" for c in cards} <= names
    modules = {p.relative_to(REPO_ROOT).as_posix() for d in ("transfer", "backbones")
               for p in (REPO_ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)  # a new subpackage must be listed
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "user_repo"  # run from inside somebody else's git repository
    elsewhere.mkdir()
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(elsewhere)], check=True)
    probe = ("import json, transfer; from transfer.data.cards import CARDS_DIR, available_cards, "
             "load_card; from transfer.grid.folder import toolkit_info; print(json.dumps("
             "{'file': transfer.__file__, 'dir': str(CARDS_DIR), 'cards': available_cards(), "
             "'modma': load_card('modma').path, 'info': toolkit_info()}))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env,
                          capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert got["file"] == str(site / "transfer" / "__init__.py")
    assert got["dir"] == str(site / "transfer" / "_cards")
    assert got["cards"] == [c[:-5] for c in cards]
    assert got["modma"] == str(site / "transfer" / "_cards" / "modma.toml")
    assert got["info"]["install_location"] == str(site / "transfer")
    assert got["info"]["git_commit"] is None  # not the commit of the repo it runs in


def _has_setuptools() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 61
