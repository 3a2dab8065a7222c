"""The console: where messages go, and the guard of the command-line entry points.

Library code reports through :mod:`logging` (``logging.getLogger(__name__)``, under the
``transfer`` logger); this module shows those messages on the rich console (stderr), notes and
progress at INFO, warnings in yellow, errors in red. A notebook silences them with
``logging.getLogger("transfer").setLevel(logging.WARNING)`` (or ``ERROR``).
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from transfer import UserError

#: Diagnostics and progress go to stderr so that ``--json`` output on stdout stays parseable.
console = Console(stderr=True, highlight=False, soft_wrap=True)


class ConsoleHandler(logging.Handler):
    """Shows log records of the ``transfer`` logger on :data:`console`."""

    STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = escape(record.getMessage())
            style = self.STYLES.get(record.levelno)
            console.print(f"[{style}]{text}[/]" if style else text)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_log = logging.getLogger("transfer")
if not any(isinstance(h, ConsoleHandler) for h in _log.handlers):
    _log.addHandler(ConsoleHandler())
    _log.setLevel(logging.INFO)


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
