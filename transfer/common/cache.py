"""Content-addressed on-disk cache with atomic writes, checksums and per-entry locks.

Everything expensive (feature arrays, pretrained source models, synthetic corpora) is stored
under a key that is the hash of everything that determines it, so a second request is a load
and concurrent writers cannot leave a half-written file: writes go to a temporary file in the
same folder, are flushed and fsynced, then renamed over the target.

Cache entries (:func:`find_entry`, :func:`store_entry`) also carry the SHA-256 of their bytes
in their file name (``<stem>.<sha256[:16]><suffix>``), so a file damaged after it was written
(a power cut during another program's write, a full disk, an in-place overwrite of the same
size) is detected on the next load, reported in one line, removed and rebuilt. Whoever builds
an entry holds :func:`entry_lock`, so two processes that need the same entry at once build it
once and both use that one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transfer import UserError
from transfer.common.console import ENVIRONMENT_ERRORS

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, writes stay atomic
    fcntl = None

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def cache_dir() -> Path:
    """``$SER_TRANSFER_CACHE``, else ``~/.cache/ser-transfer``; a one-line error when it is a
    file or cannot be made."""
    root = os.environ.get("SER_TRANSFER_CACHE") or Path.home() / ".cache" / "ser-transfer"
    path = Path(root).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = "it is a file" if path.is_file() else (err.strerror or str(err))
        raise UserError(f"cannot use the cache folder {path} (SER_TRANSFER_CACHE): {why}; set "
                        "SER_TRANSFER_CACHE to a folder you can write") from None
    return path


def content_hash(obj: Any, length: int = 16) -> str:
    """A stable hash of any JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed over it.

    On any failure (a full disk included) the temporary file is removed and ``target`` keeps
    its old content. The result gets the usual permissions (0666 minus the umask, e.g. 0644),
    not the 0600 of a fresh temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    except OSError as err:
        if err.filename is None:  # fsync's errors name no file
            err.filename = str(target)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` through :func:`atomic_path`: readers see the old
    file or the whole new one, never a part."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_line(target: str | Path, line: str) -> None:
    """Append one line and make it durable (flush + fsync) before returning.

    A single ``write`` of a line under ``O_APPEND`` is not interleaved with other appenders on
    local file systems, so concurrent processes may share one records file. When the write
    fails part-way (a full disk), the file is cut back to its old length, so earlier lines stay
    intact and no torn line is left, and the error is raised.
    """
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line from a crash
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:  # pragma: no cover - write(2) reports no space as an error
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
                view = view[written:]
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            if err.filename is None:
                err.filename = str(target)
            raise
    finally:
        os.close(fd)


# --- checksummed cache entries ---------------------------------------------------------------

def _report(message: str) -> None:
    log.warning("cache: %s", message)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_of(path: Path, stem: str, suffix: str) -> str:
    """The checksum part of an entry's file name."""
    return path.name[len(stem) + 1:len(path.name) - len(suffix)]


def find_entry(folder: Path, stem: str, suffix: str) -> Path | None:
    """The verified file of cache entry ``stem``, or None when there is none.

    A file whose bytes do not match the checksum in its name is reported in one line and
    removed, so the caller rebuilds the entry.
    """
    candidates = sorted(folder.glob(f"{glob_escape(stem)}.*{suffix}"),
                        key=lambda p: (-_mtime(p), p.name)) if folder.is_dir() else []
    for path in candidates:
        expected = _checksum_of(path, stem, suffix)
        if len(expected) != 16 or not all(c in "0123456789abcdef" for c in expected):
            continue
        try:
            actual = file_sha256(path)
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        if actual.startswith(expected):
            return path
        discard_entry(path, f"checksum mismatch: its content changed after it was written, "
                            f"{_size(path)} bytes now")
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def discard_entry(path: Path, why: str) -> None:
    """Report a damaged cache file in one line and remove it."""
    _report(f"{path} is damaged ({why}); rebuilding it")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def store_entry(folder: Path, stem: str, suffix: str, write: Callable[[Path], None]) -> Path:
    """Write cache entry ``stem`` atomically with ``write(tmp_path)``; return its final path."""
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        final = folder / f"{stem}.{file_sha256(tmp)[:16]}{suffix}"
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except OSError as err:
        if err.errno in ENVIRONMENT_ERRORS:  # a full disk, a read-only folder: say which
            raise UserError(f"cannot write the cache entry {folder / stem}{suffix}: "
                            f"{err.strerror or err}; free space there, or set "
                            "SER_TRANSFER_CACHE to another folder") from None
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return final


def glob_escape(text: str) -> str:
    """``text`` with the glob characters ``*``, ``?`` and ``[`` bracketed, so a ``glob``
    pattern matches them literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def entry_lock(folder: Path, stem: str, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on cache entry ``stem`` (``<folder>/<stem>.lock``).

    A second process that needs the same entry waits (saying so) and then finds it built. The
    kernel drops the lock when its holder dies, even by ``kill -9``.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{stem}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _report(f"waiting for another process to finish {what or stem}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
