"""The noise floor of each stage: how far the float32 reference is from exact maths.

A tolerance means something only next to the error that no port can avoid. That floor is
measured here as openai-whisper's own float32 stage against the same stage in float64 (see
``arbiter.float64_stage``), each fed the same float32 input: the round-off of the reference
itself. A faithful float32 port has an error of its own of similar size, so MAX vs PyTorch
lands at a small multiple of the floor (√2 if both errors were equal and independent; 1-2.4x
measured on synthetic:tiny, MAX being up to about twice as far from float64 as PyTorch), and
each tolerance reads as k × floor.

Other recomputations of the reference were tried and give no floor at all: PyTorch float32
with one thread instead of two, and batch 2 instead of 1, are bit-identical to the default run
on CPU (rel_l2 exactly 0 at every stage of synthetic:tiny).

``Float64Reference`` does this stage by stage during a parity run, so the same float64 output
also gives the arbiter's verdict on MAX's output, and is dropped before the next stage.
"""

from __future__ import annotations

import numpy as np
from whisper.model import Whisper

from harness.compare.metrics import Metrics, compare
from harness.reference.arbiter import Verdict, float64_stage, judge, run_float64
from harness.stages import MEL, stage_named


class Float64Reference:
    """openai-whisper's stages in float64; ``floors`` keeps each stage's floor as it is measured."""

    def __init__(self, model: Whisper, audio_features: np.ndarray | None = None) -> None:
        """``audio_features`` are the encoder output the decoder blocks cross-attend to."""
        self.model, self.audio_features = model, audio_features
        self.floors: dict[str, Metrics] = {}

    def floor(self, stage: str, x: np.ndarray, expected: np.ndarray) -> np.ndarray:
        """Record ``expected`` (PyTorch's float32 output for input ``x``) against float64, and
        return the float64 output."""
        reads_audio = stage != MEL and stage_named(self.model.dims, stage).reads_audio
        inputs = (x, self.audio_features) if reads_audio else (x,)
        exact = run_float64(float64_stage(self.model, stage), inputs)
        self.floors[stage] = compare(expected, exact)
        return exact

    def arbitrate(
        self, stage: str, x: np.ndarray, expected: np.ndarray, candidate: np.ndarray, limit: float
    ) -> Verdict:
        """The floor, and the arbiter's verdict on ``candidate`` (MAX's output for ``x``)."""
        exact = self.floor(stage, x, expected)
        max_error = compare(candidate, exact)["rel_l2"]
        return judge(stage, max_error, self.floors[stage]["rel_l2"], limit)
