"""Export steps on the runtime's progress display (rich, stderr); nothing at all with ``--quiet``."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console

from rlp.runtime.core.progress import progress

Advance = Callable[[int], None]


class Reporter:
    """Named steps with a bar each, plus tables and plain lines on stderr; ``quiet`` shows nothing."""

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
