"""Which errors are MAX refusing a graph: for a planted fault a finding, for anything else a bug.

A stage (or a transcript) whose graph MAX refuses to build, compile or run raises
``MaxGraphError``: the fault was detected there, with the error as the reason. Any other error
is a bug of the harness and propagates as it is.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from max import graph as max_graph

MAX_PACKAGE = Path(max_graph.__file__).parent.parent
# What MAX raises for a graph it cannot build (ValueError from op creation and verification,
# IndexError for an axis or index out of range), compile (RuntimeError) or run (ValueError for
# inputs of the wrong shape or dtype, RuntimeError): builtin types, which the harness raises too.
MAX_GRAPH_ERRORS = (ValueError, IndexError, RuntimeError)


class MaxGraphError(Exception):
    """MAX refused to build, compile or run a graph: for a planted fault, a finding."""


@contextmanager
def max_graph_errors() -> Iterator[None]:
    """Raise what MAX itself raised as ``MaxGraphError``; anything else, a harness bug, as is.

    The types alone cannot tell MAX's errors from the harness's, so where it was raised decides.
    """
    try:
        yield
    except MAX_GRAPH_ERRORS as error:
        if not _raised_by_max(error):
            raise
        raise MaxGraphError(_one_line(error)) from error


def _raised_by_max(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is MAX's own code."""
    raised_in = traceback.extract_tb(error.__traceback__)[-1].filename
    return Path(raised_in).is_relative_to(MAX_PACKAGE)


def _one_line(error: Exception) -> str:
    """The error as one line: MAX's graph errors span many, the diagnosis in the middle."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:400]
