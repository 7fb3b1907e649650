"""Progress lines for long runs: a live status line on a terminal, plain lines in CI logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# What long-running functions take to report a step: a ``Progress``, ``print``, or ``silent``.
Notify = Callable[[str], None]


class Progress:
    """``progress("compiling ...")`` prints elapsed time and the step, to stderr.

    On a terminal each step overwrites the last one; elsewhere (CI, pipes) each step is one
    plain line, so logs stay readable and no control characters end up in them.
    """

    def __init__(self, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.stream, self.enabled = stream, enabled
        self.live = stream.isatty()
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.perf_counter() - self.start:6.1f}s] {message}"
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def compiling(self, graph: str) -> None:
        self(f"compiling {graph} (about a minute the first time, cached afterwards)")

    def done(self) -> None:
        if self.enabled and self.live:
            self.stream.write("\n")
            self.stream.flush()


def silent(_message: str) -> None:
    """A progress sink for tests and library calls."""
