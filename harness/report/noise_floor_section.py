"""What the float64 reference says about each isolated stage: the noise floor section (each
stage's floor next to its tolerance) and the arbiter's line that the stage sections put under a
table when a stage is over tolerance. Both read the stages through ``Isolated``, so the mel,
encoder and decoder stages are judged the same way wherever they appear.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from harness.compare.tolerances import Tolerances
from harness.compare.verdict import check
from harness.report.cells import sci
from harness.report.content import Cell, Row, Section, Status, Table


class Isolated(NamedTuple):
    """One stage's isolated comparison as the noise floor table and the arbiter lines read it."""

    stage: str
    kind: str  # its tolerance kind: "mel" or "isolated"
    metrics: dict[str, Any]  # MAX vs PyTorch
    arbiter: dict[str, Any] | None  # the float64 arbiter's verdict, when it ran


ARBITER_SAYS = {
    "reference": "PyTorch is closer, so the error is MAX's",
    "max": "MAX is closer, so the error is the reference's",
    "tie": "both are within tolerance of float64: round-off on both sides, neither is wrong",
}
ARBITER_CELLS = {"reference": "PyTorch closer", "max": "MAX closer", "tie": "tie"}
NOISE_FLOOR_COLUMNS = (
    "stage",
    "floor rel_l2 (PyTorch vs float64)",
    "MAX vs float64 rel_l2",
    "MAX vs PyTorch rel_l2",
    "tolerance rel_l2",
    "tolerance / floor",
    "(MAX vs PyTorch) / floor",
    "arbiter",
)


def isolated_stages(stages: list[dict[str, Any]]) -> list[Isolated]:
    return [
        Isolated(s["stage"], "isolated", s["isolated"], s.get("arbiter"))
        for s in stages
        if "isolated" in s  # a candidate that exposes outputs only is compared chained
    ]


def isolated(document: dict[str, Any]) -> Iterator[Isolated]:
    """The mel, then every encoder and decoder stage, isolated."""
    if "mel" in document:
        yield Isolated("mel", "mel", document["mel"], document.get("mel_arbiter"))
    yield from isolated_stages(document.get("encoder", {}).get("stages", []))
    teacher_forced = document.get("decoder", {}).get("teacher_forced") or {}
    yield from isolated_stages(teacher_forced.get("stages", []))


def arbiter_lines(stages: Iterable[Isolated], limits: Tolerances) -> list[str]:
    """One line per stage over tolerance that the arbiter judged."""
    return [
        arbiter_line(s.arbiter) for s in stages if s.arbiter and check(s.metrics, s.kind, limits)
    ]


def arbiter_line(verdict: dict[str, Any]) -> str:
    """``Float64 arbiter on blocks.2: MAX 3.0e-03 from float64, PyTorch 1.1e-07: …``."""
    return (
        f"Float64 arbiter on {verdict['stage']}: MAX {sci(verdict['max_vs_f64_rel_l2'])} from "
        f"float64, PyTorch {sci(verdict['torch_vs_f64_rel_l2'])}: "
        + ARBITER_SAYS[verdict["closer"]]
    )


def noise_floor_section(document: dict[str, Any], limits: Tolerances) -> Section | None:
    """Each stage's floor next to its tolerance and MAX's error, as multiples of the floor."""
    floors = document.get("noise_floor")
    if not floors:
        return None
    rows = [_floor_row(s, floors[s.stage], limits) for s in isolated(document) if s.stage in floors]
    bullets = [
        "Floor: openai-whisper's float32 output of each stage against the same stage in float64, "
        "fed the same float32 input: the round-off no float32 implementation avoids. A faithful "
        "port's error against PyTorch is a small multiple of it (the last ratio column), and each "
        "tolerance reads as k × floor (the first).",
        "Arbiter: MAX's output against the same float64 result. A tie: both sides within the "
        "stage's rel_l2 tolerance of float64. Else the closer side is named; PyTorch closer puts "
        "the error in MAX.",
    ]
    if any(floors[s]["rel_l2"] == 0 for s in floors):
        bullets.append("A floor of 0: PyTorch float32 equals float64 bit for bit; no ratio.")
    return Section("Noise floor and float64 arbiter", bullets, [Table(NOISE_FLOOR_COLUMNS, rows)])


def _floor_row(stage: Isolated, floor: dict[str, Any], limits: Tolerances) -> Row:
    value, limit = floor["rel_l2"], limits.limit(stage.kind, "rel_l2")
    measured, verdict = stage.metrics.get("rel_l2"), stage.arbiter
    return Row(
        (
            stage.stage,
            "0 (bit-identical)" if value == 0 else sci(value),
            sci(verdict["max_vs_f64_rel_l2"]) if verdict else "—",
            sci(measured),
            sci(limit),
            _ratio(limit, value),
            _ratio(measured, value),
            _arbiter_cell(verdict),
        )
    )


def _ratio(value: float | None, floor: float) -> str:
    """``value`` as a multiple of the floor; nothing to show when the floor is exactly 0."""
    if value is None:
        return "—"
    return "— (floor 0)" if floor == 0 else f"{value / floor:.3g}×"


def _arbiter_cell(verdict: dict[str, Any] | None) -> Cell:
    if not verdict:
        return "—"
    return Status(verdict["closer"] != "reference", ARBITER_CELLS[verdict["closer"]])
