"""Planted faults: proof that the parity harness finds a porting bug and says where it is.

``run_faults`` traces PyTorch once (``reference_trace.py``), compiles every graph the faults may
run as one MAX module (``compile_ahead.py``), then for each fault of the catalogue
(``catalogue.py``) finds the first stage where it shows and, inside a block, the sub-module
(``localise.py``); with ``transcripts``, it also says whether the fault changes the greedy
transcript of the fixture clip (``transcripts.py``). One finding per fault: where it was
expected, where it was localised, and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.compare import tolerances
from harness.faults.catalogue import CATALOGUE, Fault
from harness.faults.compile_ahead import compile_ahead
from harness.faults.localise import localise
from harness.faults.reference_trace import trace_reference
from harness.faults.transcripts import transcript, transcript_fields
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.max_whisper.variant import FAITHFUL
from harness.progress import Notify, silent


def run_faults(
    checkpoint: Checkpoint,
    engine: Engine,
    faults: Sequence[Fault] = CATALOGUE,
    progress: Notify = silent,
    transcripts: bool = False,
) -> list[dict[str, Any]]:
    """Localise each fault; one result per fault, in order (see the module docstring)."""
    limits = tolerances.load(engine.dtype.name)
    progress("PyTorch reference: log-mel, encoder, teacher-forced decoder")
    ref = trace_reference(checkpoint)
    compile_ahead(checkpoint, engine, [fault.variant for fault in faults], progress)
    faithful = transcript(checkpoint, engine, FAITHFUL, progress) if transcripts else None
    results = []
    for fault in faults:
        found = localise(
            checkpoint,
            engine,
            fault.variant,
            ref,
            limits,
            lambda m, f=fault: progress(f"{f.name}: {m}"),
        )
        result = {
            "name": fault.name,
            "description": fault.description,
            "expected_stage": fault.expected_stage,
            "expected_sub_stage": fault.expected_sub_stage,
            "detected": found["localized_stage"] is not None,
            "localized_correctly": (found["localized_stage"], found["sub_stage"])
            == (fault.expected_stage, fault.expected_sub_stage),
            **found,
            "transcript_changed": None,
            "transcript": None,
            "transcript_error": None,
        }
        if faithful is not None:
            faulty = transcript(checkpoint, engine, fault.variant, progress)
            result |= transcript_fields(faithful, faulty)
        results.append(result)
    return results
