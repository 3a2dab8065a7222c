"""The results folder of a run: what may be resumed, who may write to it, and nothing
half-written (the records themselves: :mod:`transfer.grid.records`).

- :func:`check_resume` refuses to resume a folder recorded with another recipe, naming the keys
  that differ; :func:`read_summary` reads ``summary.json``, which names the plan's run keys
  (``plan``) so that a table rebuilt later (``transfer.report``) uses them only.
- :func:`results_folder` creates a new results folder exclusively (two runs started in the same
  second get two folders) and removes it again when the run fails before its first record;
  :func:`folder_lock` keeps a second writer (a run or a ``--resume``) out of a folder in use.
  Errors of a full disk, a read-only folder or missing permissions become one-line
  :class:`transfer.UserError` messages that say what was kept.
- :func:`toolkit_info` says which ser-transfer wrote the results: version, install location,
  and the commit only when the toolkit itself is a git checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transfer import REPO_ROOT, UserError, __version__
from transfer.common.console import ENVIRONMENT_ERRORS
from transfer.grid.records import read_records

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no folder locks
    fcntl = None

#: Recipe keys that do not change what a run computes: a resume may differ in them.
NOT_RESULTS = ("name", "description", "jobs", "device", "export", "sweep", "report", "log")

#: File-system errors that are the user's environment, not a bug.
DISK_ERRORS = ENVIRONMENT_ERRORS


#: summary.json's fields that are read back, with their types.
SUMMARY_FIELDS: dict[str, tuple[type, ...]] = {
    "title": (str,), "order": (list,), "source": (dict, type(None)), "protocol": (str,),
    "plan": (list,), "data": (dict,), "spaces": (dict,)}


def read_summary(out: Path) -> dict[str, Any]:
    """``summary.json`` of a results folder (``{}`` when there is none), checked: a damaged or
    edited file is a :class:`UserError` naming the field, never a table with wrong rows.

    ``plan`` lists the run keys of the grid that wrote it (older folders have none);
    ``order`` the strategy labels in table order; ``data`` what the runs were trained on.
    """
    path = out / "summary.json"
    if not path.exists():
        return {}
    fix = f"rewrite it with: python -m transfer.run RECIPE --resume {out}"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(summary).__name__}; {fix}")
    for name, kinds in SUMMARY_FIELDS.items():
        if name in summary and not isinstance(summary[name], kinds):
            raise UserError(f"{path}: {name!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                            f"got {summary[name]!r}; {fix}")
    for name in ("order", "plan"):
        if not all(isinstance(v, str) for v in summary.get(name, [])):
            raise UserError(f"{path}: {name!r} must be a list of strings, got "
                            f"{summary[name]!r}; {fix}")
    return summary


#: The files and folders a run writes in its results folder.
OUTPUT_FILES = ("runs.jsonl", "recipe.json", "environment.json", "summary.json", "table.md",
                "table.csv", "leak.md", "leak.csv")
OUTPUT_FOLDERS = ("figures", "models", "models/runs")


def check_outputs(out: Path) -> None:
    """Every output of a run in ``out`` that exists is a file (or a folder) as it should be:
    a ``runs.jsonl`` that is a folder is an error now, not after the first pack trained."""
    for name in OUTPUT_FILES:
        if (out / name).exists() and not (out / name).is_file():
            raise UserError(f"{out / name} is not a file; a run writes its {name} there: move "
                            "it away, or start a new run without --resume")
    for name in OUTPUT_FOLDERS:
        if (out / name).exists() and not (out / name).is_dir():
            raise UserError(f"{out / name} is not a folder; a run writes its {name}/ there: "
                            "move it away, or start a new run without --resume")


def has_records(out: Path) -> bool:
    """Whether ``out/runs.jsonl`` holds a run record (a folder worth keeping)."""
    return bool(read_records(out / "runs.jsonl"))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat or {prefix: {}}
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        flat = {f"{prefix}.length": len(value)}
        for i, v in enumerate(value):
            flat.update(_flatten(v, f"{prefix}[{i}]"))
        return flat
    return {prefix: value}


def recipe_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key (was X, now Y)' for every result-relevant key in which two resolved recipes differ."""
    old = {k: v for k, v in _flatten(recorded).items() if k.split(".")[0] not in NOT_RESULTS}
    new = {k: v for k, v in _flatten(current).items() if k.split(".")[0] not in NOT_RESULTS}
    missing = object()
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            diffs.append(f"{key} (was {'absent' if a is missing else json.dumps(a)}, "
                         f"now {'absent' if b is missing else json.dumps(b)})")
    return diffs


def check_resume(out: Path, recipe_dict: dict[str, Any]) -> dict[str, Any]:
    """Refuse to resume ``out`` unless it was recorded with the same recipe (up to
    :data:`NOT_RESULTS`); the error names the keys that differ. Returns the recorded recipe."""
    if not out.is_dir():
        raise UserError(f"--resume: no results folder {out}")
    saved = out / "recipe.json"
    if not saved.is_file():
        raise UserError(f"--resume: {out} has no recipe.json, so it is not a results folder of "
                        "python -m transfer.run")
    try:
        recorded = json.loads(saved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--resume: {saved} is not valid JSON ({err})") from None
    if not isinstance(recorded, dict):
        raise UserError(f"--resume: {saved} must hold a JSON object (the resolved recipe), not "
                        f"{type(recorded).__name__}")
    current = json.loads(json.dumps(recipe_dict, default=str))  # as recipe.json holds it
    diffs = recipe_differences(recorded, current)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise UserError(f"--resume: {out} was run with a different recipe, so its runs cannot be "
                        f"mixed with this one's. Differences: {shown}. Undo the change to finish "
                        "that run, or start a new one without --resume")
    check_writable(out)
    check_outputs(out)
    return recorded


def check_writable(folder: Path) -> None:
    """A clear error now, not a traceback after hours of training, when ``folder`` (or, while it
    does not exist yet, its nearest existing parent) cannot be written."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write results to {folder}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UserError(f"cannot write results to {folder}: {probe} is not writable "
                        f"({err.strerror or err}); choose another --results-dir") from None


def new_results_path(results_dir: Path, name: str, stamp: str) -> Path:
    """``<results_dir>/<name>/<stamp>``, with ``-1``, ``-2``, ... when that exists: a first
    choice; :func:`results_folder` creates it exclusively and takes the next free name when
    another run created it meanwhile."""
    out, n = results_dir / name / stamp, 1
    while out.exists():
        out, n = results_dir / name / f"{stamp}-{n}", n + 1
    return out


def _create_exclusively(out: Path, created: list[Path]) -> Path:
    """Create ``out`` (and its missing parents), or ``out-1``, ``out-2``, ... when another
    process created it first: ``mkdir`` either makes a new folder or fails, so no two runs
    share one. The folders made are appended to ``created``."""
    for parent in reversed(out.parents):
        if not parent.exists():
            with contextlib.suppress(FileExistsError):  # another run may make it meanwhile
                parent.mkdir()
                created.append(parent)
    base, n = out, 0
    while True:
        try:
            out.mkdir()
        except FileExistsError:
            n += 1
            out = base.with_name(f"{base.name}-{n}")
            continue
        created.append(out)
        return out


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold the lock of results folder ``out`` (the file ``out/.lock``) for the block.

    A second run or ``--resume`` that would write to the same folder gets a one-line error
    naming it, instead of redoing the same runs and recording them twice. The kernel drops
    the lock when its holder dies (``kill -9`` included), so a crash never leaves it locked.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"{out} is in use by another run (process {holder}) that writes its "
                            "records there; wait for it to end, then resume the folder if it "
                            "was interrupted") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def results_folder(out: Path, *, new: bool) -> Iterator[Path]:
    """Create (``new``) or reuse the results folder ``out`` for the block; yields the folder.

    A new folder is created exclusively (``out``, else ``out-1``, ...) and locked
    (:func:`folder_lock`) for the block; a reused one (``--resume``) must already be locked
    by the caller. If the block fails before the first run record is written, a new folder is
    removed again (with the parents it created, when they are left empty): a failed start
    leaves nothing behind. File-system errors (full disk, read-only folder) become a
    :class:`UserError` that says which file and what was kept.
    """
    created: list[Path] = []
    try:
        if new:
            out = _create_exclusively(out, created)
            with folder_lock(out):
                yield out
        else:
            yield out
    except BaseException as err:
        kept = has_records(out) if out.is_dir() else False
        if new and not kept:
            _remove_created(out, created)
        if isinstance(err, OSError) and err.errno in DISK_ERRORS:
            raise UserError(disk_message(err, out, kept)) from None
        raise


def _remove_created(out: Path, created: list[Path]) -> None:
    if out in created:
        shutil.rmtree(out, ignore_errors=True)
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def disk_message(err: OSError, out: Path, kept: bool) -> str:
    """The one-line message of a file-system error ``err`` while writing to ``out``; ``kept``:
    whether finished runs are recorded there."""
    what = err.filename or out
    if kept:
        n = len(read_records(out / "runs.jsonl"))
        tail = (f"the {n} finished run(s) in {out / 'runs.jsonl'} are intact; fix this, then "
                f"finish with --resume {out}")
    else:
        tail = "no run had finished, so no results folder was left behind"
    return f"cannot write {what}: {err.strerror or err}; {tail}"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def toolkit_info() -> dict[str, Any]:
    """Version and install location of this ser-transfer; its git commit (and whether the
    working tree has uncommitted changes) only when the toolkit itself is a git checkout, not
    when it is installed inside some other repository."""
    import transfer

    location = Path(transfer.__file__).resolve().parent
    commit = dirty = None
    top = _git("rev-parse", "--show-toplevel")
    if top and Path(top).resolve() == REPO_ROOT.resolve():
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"ser_transfer": __version__, "install_location": str(location),
            "git_commit": commit, "git_dirty": dirty}
