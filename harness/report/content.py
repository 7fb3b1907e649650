"""The report's content, free of format: ``outline`` fills these types, ``markdown`` and ``html``
only format them. One vocabulary for both writers is what keeps report.md and report.html telling
the same story.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Status:
    """An OK / NOT OK cell, coloured in HTML."""

    ok: bool
    text: str


@dataclass(frozen=True)
class Words:
    """Words of a transcript diff: ``change`` is "" (same), "del" (PyTorch's) or "ins" (MAX's)."""

    text: str
    change: str = ""


Cell = str | Status | tuple[Words, ...]


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    style: str = ""  # "limit" (the tolerance row) or "divergent" (the first divergent stage)


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[Row]


@dataclass(frozen=True)
class Section:
    title: str
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names written by harness/report/plots.py


@dataclass(frozen=True)
class Outline:
    title: str
    banner: str | None
    verdict: dict[str, Any]
    provenance: list[str]
    sections: list[Section]
