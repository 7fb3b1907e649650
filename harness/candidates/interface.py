"""What the harness needs from a candidate, whatever runs it: MAX, CTranslate2, PyTorch.

A candidate is whatever can produce the stage table's outputs (``harness/stages.py``) for the
encoder. It comes in one of two forms, and the harness compares each as far as it allows:

- ``StageCandidate`` exposes stage inputs: any stage can be fed any input, so each stage is run
  *isolated* (fed PyTorch's input: its own error) and *chained* (fed its own previous output:
  the drift). Our MAX port is one (``MaxAudioEncoder``).
- ``BoundaryCandidate`` exposes outputs only: one run from the mel returns every stage boundary,
  so stages are compared *chained*, and the first one over the chained limits localises a bug.
  A ``max.nn`` Module run from an adapter is one (``ModuleCandidate``): one graph, one compile.

Activations cross stage boundaries as openai-whisper's tracer records them: (batch, frames,
state) after the mel, which is (batch, n_mels, frames).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from harness.stages import Stage


@runtime_checkable
class StageCandidate(Protocol):
    def stages(self) -> list[Stage]: ...

    def run_stage(self, stage: Stage, x: np.ndarray) -> np.ndarray:
        """``stage``'s output for input ``x`` (the mel for the first stage)."""

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """The whole encoder, as the candidate runs it for real."""


@runtime_checkable
class BoundaryCandidate(Protocol):
    def stages(self) -> list[Stage]: ...

    def boundaries(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        """Every stage's output, by stage name, from one run on ``mel``."""
