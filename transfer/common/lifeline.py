"""Worker processes that end with their parent.

A worker process of a grid (``--jobs N``) or of feature extraction holds hundreds of MB (torch,
the prepared data). When its parent is killed (``kill -9``, an OOM kill, a lost SSH session
without a hang-up), nobody tells it: it would wait for work for ever, re-parented to PID 1.
:func:`die_with_parent`, run as the pool's initializer, ends the worker as soon as its parent
is gone.
"""

from __future__ import annotations

import os
import threading
import time

#: How often a worker looks for its parent: a dead parent is noticed within this many seconds,
#: and a check (one getppid call) costs nothing measurable.
CHECK_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> None:
    """End this process when the process ``parent_pid`` (its parent) is gone.

    A daemon thread compares ``os.getppid()`` with ``parent_pid`` every :data:`CHECK_SECONDS`
    (a dead parent's children are re-parented, so the ids differ) and ends the process with
    ``os._exit``: nothing of a worker's unfinished work is worth keeping, the parent records
    only what workers return. Portable to every POSIX system, unlike Linux's
    ``PR_SET_PDEATHSIG``, which also fires when the parent's thread that started the worker
    ends.
    """
    if os.getppid() != parent_pid:  # the parent died before this worker started
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(CHECK_SECONDS)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
