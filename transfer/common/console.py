"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

from rich.console import Console

from transfer import UserError

#: Diagnostics and progress go to stderr so that ``--json`` output on stdout stays parseable.
console = Console(stderr=True, highlight=False, soft_wrap=True)


ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.EFBIG}


def main_guard(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: a :class:`UserError` becomes a one-line message and exit status 2,
    Ctrl-C exits with 130 after saying what was kept, and so does a file-system error of the
    user's environment (full disk, read-only folder, no permission) naming the file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs) or 0
        except UserError as err:
            console.print(f"[bold red]error:[/] {err}")
            return 2
        except OSError as err:
            if err.errno not in ENVIRONMENT_ERRORS:
                raise
            console.print(f"[bold red]error:[/] {err.filename or 'file system'}: "
                          f"{err.strerror or err}")
            return 2
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished work is kept; rerun to continue")
            return 130

    return wrapper
