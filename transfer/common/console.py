"""The console: where messages go, and the guard of the command-line entry points.

Library code reports through :mod:`logging` (``logging.getLogger(__name__)``, under the
``transfer`` logger); this module shows those messages on the rich console (stderr), notes and
progress at INFO, warnings in yellow, errors in red. A notebook silences them with
``logging.getLogger("transfer").setLevel(logging.WARNING)`` (or ``ERROR``).

Nothing printed is read as rich markup: messages carry paths, corpus names and recipe values
that may well contain ``[bold]``, ``[target]`` or ``[/x]``, and markup would swallow them (or
raise on an unbalanced tag). Styles are given apart from the text (:func:`say`, ``style=``).
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from transfer import UserError

#: Diagnostics and progress go to stderr so that ``--json`` output on stdout stays parseable.
#: ``markup=False``: no text is ever interpreted as markup (see the module docstring).
console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def say(*parts: str | tuple[str, str]) -> None:
    """Print one message on :data:`console`: plain strings and ``(text, style)`` pairs, joined.

    No part is read as markup, so ``say(("skipped", "yellow"), f" {path}: {reason}")`` shows a
    path like ``/data/[bold]x`` as it is.
    """
    console.print(Text.assemble(*parts))


class ConsoleHandler(logging.Handler):
    """Shows log records of the ``transfer`` logger on :data:`console`."""

    STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}

    def emit(self, record: logging.LogRecord) -> None:
        """Print the record's message, coloured by its level; a failure goes to
        ``handleError``, never raised."""
        try:
            console.print(record.getMessage(), style=self.STYLES.get(record.levelno))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_log = logging.getLogger("transfer")
if not any(isinstance(h, ConsoleHandler) for h in _log.handlers):
    _log.addHandler(ConsoleHandler())
    _log.setLevel(logging.INFO)


ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.EFBIG}


def one_line(text: str) -> str:
    """``text`` on one line: line breaks (from a file name, a recipe value) shown as ``\\n``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main_guard(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: a :class:`UserError` becomes a one-line message and exit status 2,
    Ctrl-C exits with 130 after saying what was kept, and so does a file-system error of the
    user's environment (full disk, read-only folder, no permission) naming the file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs) or 0
        except UserError as err:
            say(("error:", "bold red"), " " + one_line(str(err)))
            return 2
        except OSError as err:
            if err.errno not in ENVIRONMENT_ERRORS:
                raise
            what = f"{err.filename or 'file system'}: {err.strerror or err}"
            say(("error:", "bold red"), " " + one_line(what))
            return 2
        except KeyboardInterrupt:
            say(("interrupted", "yellow"), ": finished work is kept; rerun to continue")
            return 130

    return wrapper
