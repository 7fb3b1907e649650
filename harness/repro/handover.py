"""A stage handed over: its repro folder and, for a failing block, ``minimal/`` inside it.

Used by ``python -m harness repro`` and by a failing report (for its first divergent stage).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from harness.compare import tolerances
from harness.faults.catalogue import CONTROL, Fault
from harness.faults.reference_trace import ReferenceTrace
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.progress import Notify, silent
from harness.repro import folder
from harness.repro.case import stage_case
from harness.repro.folder import Outcome, Provenance
from harness.repro.minimise import Minimal, minimise
from harness.stages import MEL, stage_named


@dataclass(frozen=True)
class HandOver:
    """What was written: the stage's repro run and, if found, the minimal one's."""

    stage: Outcome
    minimal: Minimal | None = None
    minimal_outcome: Outcome | None = None


def hand_over(
    checkpoint: Checkpoint,
    engine: Engine,
    fault: Fault,
    ref: ReferenceTrace,
    stage_name: str,
    out: Path,
    command: str,
    progress: Notify = silent,
    shrink: bool = True,
) -> HandOver:
    """Write ``out`` (and, with ``shrink``, ``out/minimal`` for a failing block); each repro.py
    is run once."""
    planted = f" with the planted fault {fault.name}" if fault is not CONTROL else ""
    title = f"stage {stage_name} of {checkpoint.name}{planted}"
    progress(f"{stage_name}: the harness's own run")
    case = stage_case(checkpoint, engine, fault.variant, ref, stage_name, title)
    stage = None if stage_name == MEL else stage_named(checkpoint.dims, stage_name)
    minimal = None
    if shrink and stage is not None and stage.kind == "block" and case.fails():
        progress(f"{stage_name}: bisecting and shrinking the failing sub-stage")
        minimal = minimise(
            checkpoint, engine, fault.variant, stage, case, tolerances.load("float32")
        )
    if minimal:
        case.notes.append(f"`minimal/` reproduces it smaller: the {minimal.describe()}.")
    provenance = Provenance(
        command=command,
        model=checkpoint.name,
        weights=checkpoint.weights,
        sha256=checkpoint.sha256,
        fault=None if fault is CONTROL else fault.name,
        fault_description=None if fault is CONTROL else fault.description,
    )
    progress(f"{stage_name}: writing {out}/ and running its repro.py")
    outcome = folder.write(case, provenance, out)
    if minimal is None:
        return HandOver(outcome)
    small = replace(minimal.case, title=f"{title}, minimised to the {minimal.describe()}")
    return HandOver(outcome, minimal, folder.write(small, provenance, out / "minimal"))
