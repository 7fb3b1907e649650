"""A failing report hands its first divergent stage over: ``repro/`` in the report folder.

``mark`` names the stage in the document (report.md links the folder from under its verdict);
``write`` writes it after the report, from the report's own inputs (the LibriVox window and its
true text), so its repro.py shows the numbers of the report's table. Only float32 reports on the
CPU get one: a repro compiles float32 graphs for the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.faults.catalogue import CONTROL
from harness.faults.reference_trace import trace_reference
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.progress import Notify, silent
from harness.repro.handover import HandOver, hand_over

FOLDER = "repro"


def first_divergent(document: dict[str, Any]) -> str | None:
    """The first stage over tolerance, encoder before decoder (a decoder's input is the
    encoder's output)."""
    encoder = (document.get("encoder") or {}).get("first_divergent_stage")
    teacher_forced = (document.get("decoder") or {}).get("teacher_forced") or {}
    return encoder or teacher_forced.get("first_divergent_stage")


def mark(document: dict[str, Any]) -> None:
    """Record in ``document["repro"]`` which stage ``write`` will hand over, if any."""
    stage = first_divergent(document)
    plain = document["device"] == "cpu" and document["dtype"] == "float32"
    if stage and plain and not document["verdict"]["pass"]:
        document["repro"] = {"stage": stage, "folder": FOLDER}


def write(
    checkpoint: Checkpoint, document: dict[str, Any], out: Path, progress: Notify = silent
) -> HandOver | None:
    """Write ``out/repro`` for the stage ``mark`` recorded; nothing when it recorded none."""
    if "repro" not in document:
        return None
    from harness.report.build import DEFAULT_AUDIO  # the report's own input

    stage = document["repro"]["stage"]
    ref = trace_reference(checkpoint, DEFAULT_AUDIO)
    command = f"python -m harness report --model {checkpoint.name} (its first divergent stage)"
    return hand_over(checkpoint, Engine(), CONTROL, ref, stage, out / FOLDER, command, progress)
