"""Inside a divergent block: which of its sub-modules is wrong.

A block is ``attn_ln`` → ``attn`` → (``cross_attn_ln`` → ``cross_attn``) → ``mlp_ln`` → ``mlp``,
tied together by residual additions. ``tracer.trace_block`` records what each of openai-whisper's
sub-modules is fed and returns; ``MaxSubStages`` runs MAX's counterpart on that same input, so
each sub-stage's error is its own. A block that diverges while all its sub-modules agree has its
fault in what lies between them: the residual additions, reported as the sub-stage ``residual``.
"""

from __future__ import annotations

import numpy as np

from harness.compare.metrics import Metrics, compare
from harness.compare.tolerances import Tolerances
from harness.max_whisper.substages import MaxSubStages
from harness.reference.tracer import Capture
from harness.stages import Stage

RESIDUAL = "residual"


def bisect(
    candidate: MaxSubStages,
    block: Stage,
    capture: Capture,
    xa: np.ndarray | None,
    tolerances: Tolerances,
) -> tuple[str, dict[str, Metrics]]:
    """The first sub-stage of ``block`` whose isolated metrics break tolerance, or ``residual``.

    Returns it with the metrics of every sub-stage run (stopping at the divergent one).
    """
    metrics: dict[str, Metrics] = {}
    for sub_stage in capture:  # hooks fire in execution order
        x, expected = capture[sub_stage]
        metrics[sub_stage] = compare(candidate.run(block, sub_stage, x, xa), expected)
        if tolerances.violations(metrics[sub_stage], "isolated"):
            return sub_stage, metrics
    return RESIDUAL, metrics
