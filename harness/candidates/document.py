"""The parity report of a candidate other than our port: ``parity.json``, as ``report.build``
writes it for ours, limited to what the candidate covers.

A shipped or user adapter covers the encoder: the document holds the encoder compared stage by
stage, the candidate's findings, and says that the mel, decoder, transcripts, language, peers
and speed are not provided by the candidate (not compared, not run with our port instead). The
verdict, tolerances, renderers and gate are the ones every report uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.candidates.findings import CandidateFailure, Finding, at_candidate_boundary
from harness.candidates.interface import BoundaryCandidate, StageCandidate
from harness.candidates.ladder import build_findings
from harness.candidates.max_module import ModuleCandidate
from harness.candidates.parity import candidate_encoder_parity
from harness.candidates.registry import Candidate
from harness.compare import tolerances
from harness.compare.tolerances import Tolerances
from harness.compare.verdict import verdict
from harness.errors import HarnessError
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import DTYPES, Engine
from harness.progress import Notify, silent
from harness.reference import tracer
from harness.report.build import DEFAULT_AUDIO, encoder_window, header

NOT_COVERED = "mel, decoder, transcripts, language, peers, speed"
FORMS = {
    StageCandidate: "stage inputs exposed: every stage isolated and chained",
    BoundaryCandidate: "outputs only: one run, every stage boundary an output; compared chained",
}


def build(
    checkpoint: Checkpoint,
    candidate: Candidate,
    device: str = "cpu",
    dtype: str = "float32",
    progress: Notify = silent,
) -> dict[str, Any]:
    """Build ``candidate`` (every build failure a finding), run it once on the report's window
    and compare each encoder stage it produced with openai-whisper's."""
    if dtype != "float32":
        raise HarnessError(f"--candidate {candidate.name}: adapters run float32 (not {dtype})")
    limits = tolerances.load(dtype)
    engine = Engine(device, DTYPES[dtype], on_compile=lambda n: progress(f"compiling {n}"))
    _, mel, speech = encoder_window(checkpoint)
    progress("PyTorch reference: tracing the encoder")
    reference = tracer.trace_encoder(checkpoint.model.encoder, mel[None])
    progress(f"building {candidate.name}")
    bound, findings = built(candidate, checkpoint, engine)
    encoder = None
    if bound is not None:
        encoder, findings = compared_encoder(bound, reference, limits, speech, progress)
    document = {
        **header(checkpoint, device, dtype, limits),
        "candidate": candidate_section(candidate, bound, checkpoint, findings, engine),
    }
    if encoder:
        document["encoder"] = {"audio": DEFAULT_AUDIO.name, **encoder}
    document["compile_s"] = engine.compile_seconds
    document["verdict"] = verdict(document)
    return document


def built(
    candidate: Candidate, checkpoint: Checkpoint, engine: Engine
) -> tuple[StageCandidate | BoundaryCandidate | None, list[Finding]]:
    """The candidate bound to the checkpoint, or none and every build failure found."""
    state_dict = checkpoint.state_dict()
    if candidate.factory is not None:
        try:
            with at_candidate_boundary("construct"):
                return candidate.factory(checkpoint.dims, state_dict), []
        except CandidateFailure as failure:
            return None, [failure.finding]
    findings = build_findings(candidate.adapter, checkpoint.dims, state_dict, engine)
    if findings:
        return None, findings
    return ModuleCandidate(candidate.adapter, checkpoint.dims, state_dict, engine), []


def compared_encoder(
    bound: StageCandidate | BoundaryCandidate,
    reference: dict[str, np.ndarray],
    limits: Tolerances,
    speech: float,
    progress: Notify,
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The encoder section, or none and the finding when the candidate fails to compile or run."""
    try:
        return candidate_encoder_parity(bound, reference, limits, speech, progress)
    except CandidateFailure as failure:
        return None, [failure.finding]


def candidate_section(
    candidate: Candidate,
    bound: StageCandidate | BoundaryCandidate | None,
    checkpoint: Checkpoint,
    findings: list[Finding],
    engine: Engine,
) -> dict[str, Any]:
    """``parity.json["candidate"]``: what was compared, how, and what failed."""
    adapter = candidate.adapter
    return {
        "name": candidate.name,
        "adapter": candidate.origin,
        "source": str(adapter.source) if adapter else candidate.origin,
        "form": FORMS[StageCandidate if isinstance(bound, StageCandidate) else BoundaryCandidate],
        "covers": ["encoder"],
        "not_covered": NOT_COVERED,
        "fixes_applied": list(candidate.fixes_applied),
        "graphs_compiled": len(engine.compile_seconds),
        "graphs_stage_by_stage": 3 + checkpoint.dims.n_audio_layer,
        "findings": [f.as_dict() for f in findings],
    }
