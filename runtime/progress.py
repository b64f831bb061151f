"""Rich progress bars on stderr; ``quiet`` (or a stderr that is not a terminal) turns them off.

Off a terminal (logs, CI, pipes) a bar would only print its final frame among the
error lines, so it is not shown at all.
"""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# stderr=True looks sys.stderr up at every write, so later redirection is followed
stderr_console = Console(stderr=True)


class _Silent:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


@contextlib.contextmanager
def progress(quiet: bool = False, extra: str | None = None, *, transient: bool = False, silent=_Silent):
    """A rich progress bar on stderr; ``silent()`` (a no-op bar by default) where none is shown.

    Messages printed while the bar is live should go through ``bar.console`` so they
    appear above it. ``transient`` removes the bar when the block ends.
    """
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield silent()
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    if extra:
        cols.append(TextColumn(extra))
    with Progress(*cols, console=console, transient=transient) as bar:
        yield bar
