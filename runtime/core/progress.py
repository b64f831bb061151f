"""Rich progress bars on stderr; ``quiet`` turns them off.

Off a terminal (logs, CI, pipes, nohup) a bar would only print its final frame
among the error lines; there a plain line per task is printed instead, at most
every ``RLP_PROGRESS_INTERVAL`` seconds (default 30), so that a long job piped to
a log shows that it is alive and how far it got. :class:`Reporter` is a display of
named steps (a bar each) with tables and plain lines, on the same bars.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

# stderr=True looks sys.stderr up at every write, so later redirection is followed
stderr_console = Console(stderr=True)
#: columns beside a bar's extra text and its bar: a description of up to 22 characters, n/total, elapsed, remaining
_FIXED_WIDTH = 52


class _Silent:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


class _Lines:
    """Off a terminal: ``description: completed/total (percent), elapsed[, fields]`` per task, rate-limited."""

    def __init__(self, console: Console, interval: float):
        self.console = console
        self.interval = interval
        self.tasks: dict[int, dict] = {}

    def add_task(self, description: str = "", total=None, completed: float = 0, **fields) -> int:
        tid = len(self.tasks)
        now = time.monotonic()
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": now, "said": now}
        return tid

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, completed=self.tasks[task]["completed"] + advance)

    def update(self, task: int, completed=None, total=None, description=None, advance=None, **fields) -> None:
        t = self.tasks[task]
        if advance is not None:
            completed = t["completed"] + advance
        for key, value in (("completed", completed), ("total", total), ("description", description)):
            if value is not None:
                t[key] = value
        t["fields"].update(fields)
        now = time.monotonic()
        if now - t["said"] >= self.interval:
            t["said"] = now
            done, total = t["completed"], t["total"]
            of = f"/{total:g} ({100 * done / total:.0f}%)" if total else ""
            info = " ".join(str(v) for v in t["fields"].values() if v not in (None, ""))
            line = f"{t['description']}: {done:g}{of}, {now - t['start']:.0f} s" + (f", {info}" if info else "")
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def remove_task(self, task: int) -> None:
        self.tasks.pop(task, None)


@contextlib.contextmanager
def progress(quiet: bool = False, extra: str | None = None, *, transient: bool = False, silent=_Silent):
    """A rich progress bar on stderr; ``silent()`` (a no-op bar by default) where none is shown.

    Messages printed while the bar is live should go through ``bar.console`` so they
    appear above it. ``transient`` removes the bar when the block ends.
    """
    console = Console(stderr=True)
    if quiet:
        yield silent()
        return
    if not console.is_terminal:
        if silent is not _Silent:  # the caller shows its own progress off a terminal
            yield silent()
            return
        try:
            interval = float(os.environ.get("RLP_PROGRESS_INTERVAL", "30"))
        except ValueError:
            interval = 30.0
        yield _Lines(console, interval)
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn()]
    if extra:  # the extra text takes what the terminal has left, cut with an ellipsis: the bar and counts stay whole
        bar_width = 10 if console.width < 120 else 40
        cols[1] = BarColumn(bar_width=bar_width)
        cols.append(TextColumn(extra, table_column=Column(no_wrap=True, overflow="ellipsis",
                                                          max_width=max(1, console.width - _FIXED_WIDTH - bar_width))))
    with Progress(*cols, console=console, transient=transient) as bar:
        yield bar


Advance = Callable[[int], None]


class Reporter:
    """Named steps with a bar each, plus tables and plain lines on stderr; ``quiet`` shows nothing (rlp-export's
    display)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        # stderr=True looks sys.stderr up at every write, so redirection (and pytest's capsys) is followed
        self.console = Console(stderr=True)
        self._stack = contextlib.ExitStack()
        self._bar = None

    def __enter__(self) -> "Reporter":
        self._bar = self._stack.enter_context(progress(self.quiet))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._bar = None

    @contextlib.contextmanager
    def step(self, description: str, total: int = 1) -> Iterator[Advance]:
        """A step of ``total`` units; yields ``advance(n)``; shown complete when the block ends."""
        bar = self._bar
        if bar is None:
            yield lambda n=1: None
            return
        task = bar.add_task(description, total=max(1, total))
        yield lambda n=1: bar.advance(task, n)
        bar.update(task, completed=max(1, total))

    def print(self, *renderables) -> None:
        """Rich renderables (tables)."""
        if not self.quiet:
            self.console.print(*renderables)

    def line(self, text: str) -> None:
        """Plain text, never wrapped or parsed as markup (paths and commands get copied)."""
        if not self.quiet:
            self.console.print(text, soft_wrap=True, markup=False, highlight=False)
