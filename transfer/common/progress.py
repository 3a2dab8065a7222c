"""Progress bars (rich), shown on a terminal and quiet elsewhere (CI logs, pipes)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from transfer.common.console import console


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr; off when ``enabled`` is false or stderr is no terminal."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not (enabled and console.is_terminal), transient=False,
    )
