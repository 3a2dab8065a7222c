"""Content-addressed on-disk cache with atomic writes.

Everything expensive (feature arrays, pretrained source models, synthetic corpora) is stored
under a key that is the hash of everything that determines it, so a second request is a load
and concurrent writers cannot leave a half-written file: writes go to a temporary file in the
same folder, are flushed and fsynced, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """``$SER_TRANSFER_CACHE``, else ``~/.cache/ser-transfer``."""
    root = os.environ.get("SER_TRANSFER_CACHE") or Path.home() / ".cache" / "ser-transfer"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(obj: Any, length: int = 16) -> str:
    """A stable hash of any JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed over it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_line(target: str | Path, line: str) -> None:
    """Append one line and make it durable (flush + fsync) before returning.

    A single ``write`` of a line under ``O_APPEND`` is not interleaved with other appenders on
    local file systems, so concurrent processes may share one records file.
    """
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line from a crash
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
