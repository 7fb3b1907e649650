"""The report's candidate section: which implementation was compared, how far, and its findings
(each a stage it could not build, run or lay out as openai-whisper does). Our own port, which
covers everything and has none, gets no section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.candidates import OURS
from harness.report.content import Row, Section, Table

FINDING_COLUMNS = (
    "#",
    "stage",
    "phase",
    "where",
    "error",
    "fix the harness can tell",
    "adapter's fix",
    "found behind",
)


def candidate_section(candidate: dict[str, Any] | None) -> Section | None:
    if not candidate or candidate["name"] == OURS:
        return None
    bullets = [
        f"Candidate: {candidate['name']} (adapter {_short(candidate['adapter'])}; "
        f"its code {_short(candidate['source'])})",
        f"Form: {candidate['form']}",
        f"Covers: {', '.join(candidate['covers'])}; not provided by the candidate, so not "
        f"compared: {candidate['not_covered']}",
        _graphs_line(candidate),
    ]
    if candidate["fixes_applied"]:
        bullets.append("Fixes applied by the adapter: " + "; ".join(candidate["fixes_applied"]))
    findings = candidate["findings"]
    bullets.append(f"Findings: {len(findings) or 'none'}")
    rows = [_finding_row(i, f) for i, f in enumerate(findings, 1)]
    tables = [Table(FINDING_COLUMNS, rows)] if rows else []
    return Section("Candidate", bullets, tables)


def _graphs_line(candidate: dict[str, Any]) -> str:
    compiled = candidate["graphs_compiled"]
    if not compiled:
        failed = " (the build failed before a graph was whole)" if candidate["findings"] else ""
        return f"MAX graphs compiled: none{failed}"
    return (
        f"Graphs compiled: {compiled}, where a graph per stage would be "
        f"{candidate['graphs_stage_by_stage']} (a module's blocks carry their own weight names, "
        "so each block would be a graph of its own)"
    )


def _finding_row(number: int, finding: dict[str, Any]) -> Row:
    return Row(
        (
            str(number),
            finding["stage"] or "—",
            finding["phase"],
            finding["where"] or "—",
            finding["error"],
            finding["fix"] or "—",
            finding.get("adapter_fix") or "—",
            "; ".join(finding["behind"]) or "as is",
        )
    )


def _short(path: str) -> str:
    """A path from the repository or from site-packages, as a reader would look it up."""
    parts = Path(path).parts
    for anchor in ("site-packages", "harness", "parity_tests"):
        if anchor in parts:
            start = parts.index(anchor) + (anchor == "site-packages")
            return "/".join(parts[start:])
    return path
