"""A candidate that cannot build or run a stage is a finding, not a crash.

A ``Finding`` says which stage, the error's last line, where in the candidate's source it arose
and, where the harness can tell, what would fix it. Errors are caught only where the harness
calls the candidate's code (``at_candidate_boundary``); an error whose deepest frame is the
harness's own is a harness bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

HARNESS = Path(__file__).resolve().parents[1]
SHAPE = r"\(([\d, ]+)\)"


@dataclass(frozen=True)
class Finding:
    """One thing the candidate could not do, stated so its author can act on it."""

    stage: str | None  # a stage of the stage table; None when no stage can be told
    phase: str  # construct, load weights, build graph, compile, run, compare
    error: str  # the error's last line, with its type
    where: str | None = None  # "encoder.py line 34: <the line>"
    fix: str | None = None  # what would fix it, where the harness can tell
    behind: tuple[str, ...] = field(default=())  # the adapter's fixes applied to get this far
    adapter_fix: str | None = None  # the adapter's documented fix that gets past it

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "behind": list(self.behind)}


class CandidateFailure(Exception):
    """The candidate's own code failed; ``finding`` says how. Raised only at the boundary."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.error)
        self.finding = finding


@contextmanager
def at_candidate_boundary(phase: str, stage: str | None = None) -> Iterator[None]:
    """Turn an error raised inside the candidate's code (or MAX under it) into a
    ``CandidateFailure``; one raised by the harness itself propagates untouched."""
    try:
        yield
    except CandidateFailure:
        raise
    except Exception as error:
        if raised_by_harness(error.__traceback__):
            raise
        raise CandidateFailure(Finding(stage, phase, last_line(error))) from error


def raised_by_harness(tb: TracebackType | None) -> bool:
    """Whether the innermost frame that is neither a library's nor MAX's is the harness's.

    Frames in MAX (``site-packages/max``, where MAX's own candidate lives too) and in adapters
    (the user's code) belong to the candidate; numpy's or torch's are skipped, so a harness
    call that fails inside them is still the harness's.
    """
    frames = [Path(f.filename).resolve() for f in traceback.extract_tb(tb)]
    relevant = [f for f in frames if "site-packages" not in f.parts or _in_max(f)]
    if not relevant:
        return False
    innermost = relevant[-1]
    return innermost.is_relative_to(HARNESS) and "adapters" not in innermost.parts


def _in_max(path: Path) -> bool:
    parts = path.parts
    return "site-packages" in parts and parts[parts.index("site-packages") + 1] == "max"


def last_line(error: BaseException) -> str:
    """``Type: the message's last line``, or for MAX's graph errors the line after
    ``Diagnostics:``, which states the reason where the last line only names the op."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Diagnostics:" in lines[:-1]:
        lines = lines[: lines.index("Diagnostics:") + 2]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def frames_in(source: Path, error: BaseException) -> list[traceback.FrameSummary]:
    """The traceback frames of ``error`` (and the errors it was raised from) in ``source``."""
    frames = []
    while error is not None:
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if Path(f.filename).resolve() == source.resolve()
        ] + frames
        error = error.__cause__
    return frames


def line_at(source: Path, line: int) -> str:
    return f"{source.name} line {line}: `{source.read_text().splitlines()[line - 1].strip()}`"


@cache
def _assignments(source: Path) -> list[tuple[str, int, int]]:
    """``self.<attr> = …`` statements of ``source``: (attr, first line, last line)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                    found.append((target.attr, node.lineno, node.end_lineno or node.lineno))
    return found


def attribute_assigned_at(source: Path, line: int) -> str | None:
    """The ``self.<attr>`` whose assignment spans ``line`` (the outermost one)."""
    spans = [(a, first, last) for a, first, last in _assignments(source) if first <= line <= last]
    return max(spans, key=lambda s: s[2] - s[1])[0] if spans else None


def where_assigned(source: Path, attribute: str) -> str | None:
    """``encoder.py lines 154–163 (self.conv1 = …)``: where a sub-module is constructed."""
    for attr, first, last in _assignments(source):
        if attr == attribute:
            return f"{source.name} lines {first}–{last} (`self.{attr} = …`)"
    return None


def transpose_fix(error: str) -> str | None:
    """ "Value ... had different shape (expected=(3, 80, 384), actual=(384, 80, 3))": the axis
    order that turns the actual shape into the expected one, when there is one."""
    shapes = re.findall(rf"expected={SHAPE}.*?actual={SHAPE}", error)
    if not shapes:
        return None
    expected, actual = (tuple(int(d) for d in s.split(",") if d.strip()) for s in shapes[-1])
    order = permutation(actual, expected)
    if order is None:
        return None
    return f"the weight matches after a transpose {order}: {actual} → {expected}"


def permutation(shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axis order ``p`` with ``shape[p] == target`` (ties resolved in order), or None."""
    if sorted(shape) != sorted(target) or shape == target:
        return None
    free = list(range(len(shape)))
    order = []
    for size in target:
        axis = next(a for a in free if shape[a] == size)
        free.remove(axis)
        order.append(axis)
    return tuple(order)


def quoted_weight(error: str) -> str | None:
    """The weight an error names: ``'conv1.weight'`` in MAX's shape-check message."""
    match = re.search(r"weight '([\w.]+)'", error)
    return match.group(1) if match else None
