"""The encoder parity run: every stage isolated and chained, then the fused graph.

*Isolated*: a MAX stage is fed the PyTorch activation of the stage before it, so its error is
its own. *Chained*: it is fed MAX's own previous output, so the error is the drift accumulated
up to it. Together they tell a bug in one stage from round-off growing along the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import numpy as np

from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.metrics import Metrics, compare
from harness.tolerances import Tolerances


class StageResult(TypedDict):
    stage: str
    isolated: Metrics
    chained: Metrics


class EncoderParity(TypedDict):
    stages: list[StageResult]
    fused: Metrics
    first_divergent_stage: str | None


Progress = Callable[[str], None]


def encoder_parity(
    candidate: MaxAudioEncoder,
    reference: dict[str, np.ndarray],
    tolerances: Tolerances,
    progress: Progress = lambda _msg: None,
) -> EncoderParity:
    """Compare ``candidate`` stage by stage with a reference trace (see ``tracer.trace_encoder``)."""
    results: list[StageResult] = []
    previous_name, chained_input = "mel", reference["mel"]
    for stage in candidate.stages():
        progress(f"encoder stage {stage.name}")
        isolated = candidate.run_stage(stage, reference[previous_name])
        chained_input = candidate.run_stage(stage, chained_input)
        results.append(
            StageResult(
                stage=stage.name,
                isolated=compare(isolated, reference[stage.name]),
                chained=compare(chained_input, reference[stage.name]),
            )
        )
        previous_name = stage.name
    progress("fused encoder")
    fused = compare(candidate(reference["mel"]), reference["ln_post"])
    return EncoderParity(
        stages=results,
        fused=fused,
        first_divergent_stage=first_divergent(results, tolerances),
    )


def first_divergent(results: list[StageResult], tolerances: Tolerances) -> str | None:
    """The first stage whose *isolated* error breaks tolerance: where a bug is, not its echo."""
    for result in results:
        if tolerances.violations(result["isolated"], "isolated"):
            return result["stage"]
    return None
