"""A progress bar for long commands: count, rate and ETA on a terminal, silent otherwise.

The library reports progress through a ``progress(done, total)`` callback and never prints; a
command wraps its library call in ``progress_bar`` and passes the reporter as that callback:

    with progress_bar("converting", unit="img", quiet=quiet) as bar:
        summary = convert_images(..., progress=bar, warn=bar.log)

The bar is drawn on stderr only when stderr is a terminal and not ``--quiet``. It refreshes from
the callback (at most ten times a second) rather than from a thread, so commands may fork worker
processes while it is shown.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import click


class ProgressReporter:
    """Callable ``(done, total)``; ``log(message)`` prints a line to stderr above the bar."""

    def __init__(self, progress=None, task=None, quiet: bool = False):
        self._progress, self._task, self._quiet = progress, task, quiet
        self._last = 0.0

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=done, total=total)
        now = time.monotonic()
        if now - self._last >= 0.1 or (total is not None and done >= total):
            self._last = now
            self._progress.refresh()

    def log(self, message: str) -> None:
        if self._quiet:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            click.echo(message, err=True)


def _rate_column(unit: str):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")

    return RateColumn()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "it", quiet: bool = False,
                 enabled: bool | None = None) -> Iterator[ProgressReporter]:
    """Yield a ``ProgressReporter``; ``enabled`` defaults to "stderr is a terminal and not quiet"."""
    if enabled is None:
        enabled = not quiet and sys.stderr.isatty()
    if not enabled:
        yield ProgressReporter(quiet=quiet)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _rate_column(unit),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
        console=Console(stderr=True), auto_refresh=False, transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield ProgressReporter(progress, task, quiet)
        progress.refresh()
