"""Where a planted fault first shows: each stage checked isolated, a divergent block bisected.

``localise`` runs the parity comparison with isolated inputs (every MAX stage fed PyTorch's
input for it): the log-mel of the fixture clip, the encoder stages, then the decoder stages
teacher-forced on the standard prompt and the clip's true sentence. It stops at the first stage
whose metrics break tolerance, so a fault compiles only the graphs up to where it shows, and of
those only the ones it changes: its other graphs are the faithful ones, run through the faithful
model's compiled modules (``Engine.compile_together``). A stage whose
graph MAX refuses to build, compile or run (``MaxGraphError``), or that returns the wrong shape,
counts as detected there, with the error as the reason; any other error is a bug of the harness
and propagates. A divergent block is bisected into its sub-modules (``substages.py``), and the
float64 arbiter (``arbiter.py``) says which side is right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.compare.bisect import bisect
from harness.compare.metrics import Metrics, compare
from harness.compare.stage_walk import isolated_inputs
from harness.compare.tolerances import Tolerances
from harness.faults.graph_errors import MaxGraphError, max_graph_errors
from harness.faults.reference_trace import ReferenceTrace
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import Engine
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.substages import MaxSubStages
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.variant import Variant
from harness.progress import Notify, silent
from harness.reference.arbiter import arbitrate
from harness.reference.tracer import trace_block
from harness.stages import MEL, TOKENS, stage_named


@dataclass(frozen=True)
class Check:
    """One isolated stage comparison: PyTorch's inputs and output, and how MAX computes it."""

    stage: str
    tolerance_kind: str
    inputs: tuple[np.ndarray, ...]  # as the arbiter takes them
    expected: np.ndarray
    run: Callable[[], np.ndarray]


def checks(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, ref: ReferenceTrace
) -> Iterator[Check]:
    """Every stage in pipeline order, MAX fed PyTorch's input: mel, encoder, decoder.

    The log-mel is compared as (frames, n_mels), so its cosine per frame is per row.
    """
    mel = MaxLogMel(checkpoint.dims.n_mels, engine, variant)
    yield Check(MEL, "mel", (ref.audio,), ref.mel.T, lambda: mel(ref.audio).T)
    state = checkpoint.state_dict()
    audio_encoder = MaxAudioEncoder(checkpoint.dims, state, engine, variant)
    for stage, x, expected in isolated_inputs(audio_encoder.stages(), ref.encoder, MEL):
        yield Check(
            stage.name,
            "isolated",
            (x,),
            expected,
            lambda stage=stage, x=x: audio_encoder.run_stage(stage, x),
        )
    text_decoder = MaxTextDecoder(checkpoint.dims, state, engine, variant)
    xa = ref.encoder[audio_encoder.stages()[-1].name]  # the encoder's output
    for stage, x, expected in isolated_inputs(text_decoder.stages(), ref.decoder, TOKENS):
        inputs = (x, xa) if stage.reads_audio else (x,)
        yield Check(
            stage.name,
            "isolated",
            inputs,
            expected,
            lambda stage=stage, x=x: text_decoder.run_stage(stage, x, xa),
        )


def localise(
    checkpoint: Checkpoint,
    engine: Engine,
    variant: Variant,
    ref: ReferenceTrace,
    limits: Tolerances,
    progress: Notify = silent,
) -> dict[str, Any]:
    """The first stage where ``variant`` breaks tolerance, why, and (in a block) which sub-stage.

    Stops there: later stages would only be compiled to confirm what is already known. When no
    stage breaks tolerance, the metrics are those of the stage closest to its rel_l2 limit.
    """
    closest: tuple[float, str, Metrics] = (-1.0, "", {})
    for check in checks(checkpoint, engine, variant, ref):
        progress(f"stage {check.stage}")
        try:
            with max_graph_errors():
                output = check.run()
        except MaxGraphError as error:
            return _found(check.stage, str(error))
        if output.shape != check.expected.shape:
            shapes = f"MAX {output.shape}, PyTorch {check.expected.shape}"
            return _found(check.stage, f"output shape mismatch: {shapes}")
        metrics = compare(output, check.expected)
        failures = limits.violations(metrics, check.tolerance_kind)
        if failures:
            found = _found(check.stage, "; ".join(failures), metrics)
            limit = limits.limit(check.tolerance_kind, "rel_l2")
            found["arbiter"] = arbitrate(
                checkpoint.model, check.stage, check.inputs, output, check.expected, limit
            )
            if check.stage != MEL and stage_named(checkpoint.dims, check.stage).kind == "block":
                progress(f"bisecting {check.stage}")
                found |= _bisect(checkpoint, engine, variant, check, limits)
            return found
        margin = metrics["rel_l2"] / limits.limit(check.tolerance_kind, "rel_l2")
        closest = max(closest, (margin, check.stage, metrics), key=lambda c: c[0])
    margin, stage, metrics = closest
    reason = f"every stage within tolerance; closest {stage}, rel_l2 at {margin:.2g} x its limit"
    return _found(None, reason, metrics)


def _found(stage: str | None, reason: str, metrics: Metrics | None = None) -> dict[str, Any]:
    return {
        "localized_stage": stage,
        "reason": reason,
        "metrics": metrics,
        "arbiter": None,
        "sub_stage": None,
        "sub_stage_metrics": None,
    }


def _bisect(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, check: Check, limits: Tolerances
) -> dict[str, Any]:
    """Which sub-module of the block ``check.stage`` diverges (see ``compare.bisect``)."""
    model, stage = checkpoint.model, stage_named(checkpoint.dims, check.stage)
    half = model.decoder if stage.side == "decoder" else model.encoder
    xa, mask = (check.inputs[1], model.decoder.mask) if stage.reads_audio else (None, None)
    capture = trace_block(half.blocks[stage.block], check.inputs[0], xa, mask)
    candidate = MaxSubStages(checkpoint.dims, model.state_dict(), engine, variant)
    sub_stage, metrics = bisect(candidate, stage, capture, xa, limits)
    return {"sub_stage": sub_stage, "sub_stage_metrics": metrics}
