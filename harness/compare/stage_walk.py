"""The encoder parity run: every stage isolated and chained, then the fused graph.

*Isolated*: a MAX stage is fed the PyTorch activation of the stage before it, so its error is
its own. *Chained*: it is fed MAX's own previous output, so the error is the drift accumulated
up to it. Together they tell a bug in one stage from round-off growing along the network.
Given a ``Float64Reference``, each isolated stage is also recomputed in float64: the reference's
noise floor, and the arbiter's verdict on MAX's output in the stage's ``arbiter`` field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypedDict

import numpy as np

from harness.compare.metrics import Metrics, compare
from harness.compare.tolerances import Tolerances
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.progress import Notify, silent
from harness.reference.arbiter import Verdict
from harness.reference.noise_floor import Float64Reference
from harness.stages import MEL, Stage


class StageResult(TypedDict):
    stage: str
    isolated: Metrics
    chained: Metrics
    arbiter: Verdict | None  # None when the run had no float64 reference


class FrameErrors(TypedDict):
    stage: str
    rel_error_per_frame: list[float]
    speech_frames: int


class EncoderParity(TypedDict):
    stages: list[StageResult]
    fused: Metrics
    first_divergent_stage: str | None
    frame_errors: FrameErrors


# (stage, PyTorch's input to it, PyTorch's output, MAX's isolated output) -> the verdict
Arbiter = Callable[[str, np.ndarray, np.ndarray, np.ndarray], Verdict]


def isolated_inputs(
    stages: Iterable[Stage], reference: dict[str, np.ndarray], first_input: str
) -> Iterator[tuple[Stage, np.ndarray, np.ndarray]]:
    """Each stage with its isolated input and expected output from a reference trace:
    ``reference[first_input]`` feeds the first stage, each stage's output the next."""
    previous_name = first_input
    for stage in stages:
        yield stage, reference[previous_name], reference[stage.name]
        previous_name = stage.name


def compare_stages(
    stages: Sequence[Stage],
    run: Callable[[Stage, np.ndarray], np.ndarray],
    reference: dict[str, np.ndarray],
    first_input: str,
    progress: Notify = silent,
    arbiter: Arbiter | None = None,
) -> tuple[list[StageResult], dict[str, np.ndarray]]:
    """Run every stage isolated and chained against a reference trace.

    ``reference[first_input]`` feeds the first stage; ``reference[stage.name]`` is each stage's
    expected output. Returns the results and MAX's chained outputs by stage name.
    """
    results: list[StageResult] = []
    chained_outputs: dict[str, np.ndarray] = {}
    chained_input = reference[first_input]
    for stage, x, expected in isolated_inputs(stages, reference, first_input):
        progress(f"stage {stage.name}")
        isolated = run(stage, x)
        chained_input = chained_outputs[stage.name] = run(stage, chained_input)
        results.append(
            StageResult(
                stage=stage.name,
                isolated=compare(isolated, expected),
                chained=compare(chained_input, expected),
                arbiter=None if arbiter is None else arbiter(stage.name, x, expected, isolated),
            )
        )
    return results, chained_outputs


def arbiter_for(float64: Float64Reference | None, tolerances: Tolerances) -> Arbiter | None:
    """Judge isolated stages against ``float64``, a tie meaning both sides within the isolated
    rel_l2 limit of it; None without a float64 reference."""
    if float64 is None:
        return None
    limit = tolerances.limit("isolated", "rel_l2")
    return lambda stage, x, expected, output: float64.arbitrate(stage, x, expected, output, limit)


def encoder_parity(
    candidate: MaxAudioEncoder,
    reference: dict[str, np.ndarray],
    tolerances: Tolerances,
    speech_fraction: float = 1.0,
    progress: Notify = silent,
    float64: Float64Reference | None = None,
) -> EncoderParity:
    """Compare ``candidate`` stage by stage with a reference trace (see ``tracer.trace_encoder``).

    ``speech_fraction`` is the share of the 30 s window that is audio rather than padding; it
    marks where silence begins in the per-frame errors of the stage that drifted most.
    """
    results, chained_outputs = compare_stages(
        candidate.stages(),
        candidate.run_stage,
        reference,
        MEL,
        progress,
        arbiter_for(float64, tolerances),
    )
    progress("fused encoder")
    fused = compare(candidate(reference["mel"]), reference["ln_post"])
    worst = max(results, key=lambda r: r["chained"]["rel_l2"])["stage"]
    return EncoderParity(
        stages=results,
        fused=fused,
        first_divergent_stage=first_divergent(results, tolerances),
        frame_errors=frame_errors(worst, chained_outputs[worst], reference[worst], speech_fraction),
    )


def first_divergent(results: list[StageResult], tolerances: Tolerances) -> str | None:
    """The first stage whose *isolated* error breaks tolerance: where a bug is, not its echo."""
    for result in results:
        if tolerances.violations(result["isolated"], "isolated"):
            return result["stage"]
    return None


def frame_errors(
    stage: str, candidate: np.ndarray, reference: np.ndarray, speech_fraction: float
) -> FrameErrors:
    """Relative error of each frame of batch item 0: does the error sit in speech or padding?"""
    difference = np.linalg.norm((candidate[0] - reference[0]).astype(np.float64), axis=-1)
    scale = np.linalg.norm(reference[0].astype(np.float64), axis=-1)
    per_frame = np.divide(difference, scale, out=np.zeros_like(difference), where=scale > 0)
    return FrameErrors(
        stage=stage,
        rel_error_per_frame=[float(e) for e in per_frame],
        speech_frames=int(round(speech_fraction * len(per_frame))),
    )
