"""report.md: the outline (report/outline.py) written as Markdown that reads well raw and
rendered. Formatting only; what the report says is decided in the outline, once for both
report.md and report.html.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from harness.report.content import Cell, Section, Status, Table
from harness.report.outline import outline


def markdown(document: dict[str, Any], plots: Iterable[str] = ()) -> str:
    """report.md; ``plots`` are the PNG file names written next to it, linked where they belong."""
    report, available = outline(document), set(plots)
    parts = [f"# {_md(report.title)}"]
    if report.banner:
        parts.append(f"> **{_md(report.banner)}**")
    parts.append(_md_verdict(report.verdict))
    if document.get("repro"):
        parts.append(_md_repro(document["repro"]))
    parts.append("\n".join(f"- {_md(line)}" for line in report.provenance))
    for section in report.sections:
        parts.append(_md_section(section, available))
    return "\n\n".join(parts) + "\n"


def _md_verdict(result: dict[str, Any]) -> str:
    if result["pass"]:
        return "**Verdict: PASS** — every comparison is within tolerance."
    lines = [f"**Verdict: FAIL** — {len(result['failures'])} problem(s):", ""]
    return "\n".join(lines + [f"- `{failure}`" for failure in result["failures"]])


def _md_repro(repro: dict[str, str]) -> str:
    """The link to the first divergent stage's standalone reproduction (harness/repro/)."""
    folder = repro["folder"]
    return (
        f"Standalone reproduction of `{repro['stage']}`, the first divergent stage: "
        f"[{folder}/README.md]({folder}/README.md); `python {folder}/repro.py` needs only max "
        "and numpy and exits 1 while it fails."
    )


def _md_section(section: Section, available: set[str]) -> str:
    parts = [f"## {_md(section.title)}"]
    if section.bullets:
        parts.append("\n".join(f"- {_md(line)}" for line in section.bullets))
    parts += [_md_table(table) for table in section.tables]
    parts += [f"![{name}]({name})" for name in section.plots if name in available]
    return "\n\n".join(parts)


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md(c) for c in table.columns) + " |"]
    lines.append("|" + "---|" * len(table.columns))
    for row in table.rows:
        cells = [_md_cell(cell) for cell in row.cells]
        if row.style == "divergent":
            cells[0] = f"**{cells[0]}**"
        elif row.style == "limit":
            cells = [f"*{cell}*" if cell else "" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Status):
        return _md(cell.text) if cell.ok else f"**{_md(cell.text)}**"
    if isinstance(cell, tuple):
        marks = {"": "{}", "del": "~~{}~~", "ins": "**{}**"}
        return " ".join(marks[run.change].format(_md(run.text)) for run in cell)
    return _md(cell)


_MD_SPECIAL = re.compile(r"[\\`*~|<\[\]]|(?<!\w)_|_(?!\w)")


def _md(text: str) -> str:
    """Plain text made inert in Markdown (a transcript may hold any character). Only what is
    markup mid-line is escaped, so the raw file stays readable: ``>`` and ``#`` matter only at
    the start of a line, and underscores inside a word are not emphasis."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(text.split()))
