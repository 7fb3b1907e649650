"""The encoder compared for a candidate of either form (``interface.py``), with the same metrics
and tolerances as our port.

A ``StageCandidate`` goes through ``stage_walk.encoder_parity``, isolated and chained, as our port
always has. A ``BoundaryCandidate``'s outputs are compared chained; the first stage over the
chained limits is where to look (``localised_by: chained``). A boundary whose shape differs from
PyTorch's is a finding for that stage, with the transpose that matches where there is one; the
other stages are still compared.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.candidates.findings import Finding, permutation
from harness.candidates.interface import BoundaryCandidate, StageCandidate
from harness.compare.metrics import compare
from harness.compare.stage_walk import encoder_parity, frame_errors
from harness.compare.tolerances import Tolerances
from harness.progress import Notify, silent
from harness.stages import Stage


def candidate_encoder_parity(
    candidate: StageCandidate | BoundaryCandidate,
    reference: dict[str, np.ndarray],
    tolerances: Tolerances,
    speech_fraction: float,
    progress: Notify = silent,
) -> tuple[dict[str, Any], list[Finding]]:
    """The ``encoder`` section for ``candidate``, and what it could not produce."""
    if isinstance(candidate, StageCandidate):
        return dict(encoder_parity(candidate, reference, tolerances, speech_fraction, progress)), []
    progress("candidate: one run, every stage boundary")
    outputs = candidate.boundaries(reference["mel"])
    return boundary_parity(candidate.stages(), outputs, reference, tolerances, speech_fraction)


def boundary_parity(
    stages: list[Stage],
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    tolerances: Tolerances,
    speech_fraction: float,
) -> tuple[dict[str, Any], list[Finding]]:
    """Each stage's output compared chained; shape mismatches become findings."""
    results, findings = [], []
    for stage in stages:
        output, expected = outputs[stage.name], reference[stage.name]
        if output.shape != expected.shape:
            findings.append(shape_finding(stage, output.shape, expected.shape))
            continue
        results.append({"stage": stage.name, "chained": compare(output, expected)})
    section: dict[str, Any] = {"stages": results, "localised_by": "chained"}
    if not results:
        return section, findings
    section["first_divergent_stage"] = first_chained_divergent(results, tolerances)
    last = stages[-1].name
    if results[-1]["stage"] == last:
        section["fused"] = results[-1]["chained"]  # the candidate's whole encoder, one graph
    worst = max(results, key=lambda r: r["chained"]["rel_l2"])["stage"]
    section["frame_errors"] = frame_errors(worst, outputs[worst], reference[worst], speech_fraction)
    return section, findings


def first_chained_divergent(results: list[dict[str, Any]], tolerances: Tolerances) -> str | None:
    """Without isolated runs, the first stage whose chained error breaks the chained limits:
    round-off alone stays under them all the way (they are set for the accumulated drift)."""
    for result in results:
        if tolerances.violations(result["chained"], "chained"):
            return result["stage"]
    return None


def shape_finding(stage: Stage, shape: tuple[int, ...], expected: tuple[int, ...]) -> Finding:
    order = permutation(shape, expected)
    fix = f"its transpose {order} matches" if order else None
    error = f"output shape {shape}, openai-whisper's {expected}"
    return Finding(stage.name, "compare", error, fix=fix)
