"""The noise floor of each encoder stage: how far the float32 reference is from exact maths.

A tolerance means something only next to the error that no port can avoid. That floor is
measured here as openai-whisper's own float32 stage against the same stage in float64 (see
``arbiter.float64_stage``), each fed the same float32 input: the round-off of the reference
itself. A faithful float32 port has a similar error of its own, so MAX vs PyTorch should land
within a small multiple (about √2) of the floor, and each tolerance reads as k × floor.

Other recomputations of the reference were tried and give no floor at all: PyTorch float32
with one thread instead of two, and batch 2 instead of 1, are bit-identical to the default run
on CPU (rel_l2 exactly 0 at every stage of synthetic:tiny).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from harness import tracer
from harness.arbiter import float64_stage, run_float64
from harness.checkpoints import Checkpoint
from harness.metrics import Metrics, compare


def noise_floor(checkpoint: Checkpoint, mel: np.ndarray) -> dict[str, Metrics]:
    """Per encoder stage, float32 PyTorch against float64 PyTorch, isolated.

    ``mel`` is (batch, n_mels, frames); each stage's float64 run reads the float32 reference
    input of that stage, so the floor is the stage's own round-off, not accumulated drift.
    """
    reference = tracer.trace_encoder(checkpoint.model.encoder, mel)
    floors: dict[str, Metrics] = {}
    for previous, stage in pairwise(reference):  # the trace is in execution order, from "mel"
        exact = run_float64(float64_stage(checkpoint.model, stage), [reference[previous]])
        floors[stage] = compare(reference[stage], exact)
    return floors
