"""Every build failure of a candidate, not only the first, and what fixes each where the harness
can tell.

A build stops at its first error; the next hides behind it. ``build_findings`` builds the
candidate as is, then again with one more of its adapter's documented fixes applied each time,
recording each failure with the fixes it lies behind. For a graph that fails to build, the
harness tries the two input changes it can make on its own (the input's last two axes swapped; its
symbolic dims made static) and, when the failure at that line goes away, says so: graph builds
only, no compile, so the probes are cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import torch
from max.graph import TensorType

from harness.candidates.findings import CandidateFailure, Finding
from harness.candidates.max_module import ModuleAdapter, ModuleCandidate
from harness.max_whisper.engine import Engine
from harness.openai_whisper import ModelDimensions


def build_findings(
    adapter: ModuleAdapter,
    dims: ModelDimensions,
    state_dict: Mapping[str, torch.Tensor],
    engine: Engine,
) -> list[Finding]:
    """The failures met building ``adapter`` with none, then 1, 2, … of its fixes; empty when
    it builds as is. A failure gets past by the next fix is marked with that fix's name."""
    findings: list[Finding] = []
    for count in range(len(adapter.fixes) + 1):
        attempt = adapter.with_fixes(count)
        failure = build_failure(ModuleCandidate(attempt, dims, state_dict, engine))
        if findings and findings[-1].where != (failure and failure.where):
            findings[-1] = replace(findings[-1], adapter_fix=adapter.fixes[count - 1].name)
        if failure is None:
            break
        fix = failure.fix or input_fix(attempt, dims, state_dict, engine, failure)
        behind = tuple(f.name for f in adapter.fixes[:count])
        findings.append(replace(failure, fix=fix, behind=behind))
    return findings


def build_failure(candidate: ModuleCandidate) -> Finding | None:
    try:
        candidate.build()
    except CandidateFailure as failure:
        return failure.finding
    return None


def input_fix(
    adapter: ModuleAdapter,
    dims: ModelDimensions,
    state_dict: Mapping[str, torch.Tensor],
    engine: Engine,
    failure: Finding,
) -> str | None:
    """The input change that makes ``failure`` go away, when one of the harness's does."""
    if failure.phase != "build graph":
        return None
    for probe, change in ((swapped_last_axes, "transposed"), (static_dims(dims), "made static")):
        probed = probe(adapter)
        outcome = build_failure(ModuleCandidate(probed, dims, state_dict, engine))
        if outcome is None or outcome.where != failure.where:
            declared, tried = (
                _shape(ModuleCandidate(a, dims, state_dict, engine)) for a in (adapter, probed)
            )
            return f"the input {change}: declared {declared}, builds past this line as {tried}"
    return None


def swapped_last_axes(adapter: ModuleAdapter) -> ModuleAdapter:
    """The input read with its last two axes swapped (channels first vs channels last)."""

    def input_type(module, dims) -> TensorType:
        declared = adapter.input_type(module, dims)
        shape = list(declared.shape)
        return TensorType(declared.dtype, [*shape[:-2], shape[-1], shape[-2]], declared.device)

    def input_layout(mel: np.ndarray) -> np.ndarray:
        return np.swapaxes(adapter.input_layout(mel), -1, -2)

    return replace(adapter, input_type=input_type, input_layout=input_layout)


def static_dims(dims: ModelDimensions) -> Callable[[ModuleAdapter], ModuleAdapter]:
    """Every dim after the batch made the size the harness's input has there."""

    def probe(adapter: ModuleAdapter) -> ModuleAdapter:
        mel = np.zeros((1, dims.n_mels, 2 * dims.n_audio_ctx), np.float32)
        sizes = adapter.input_layout(mel).shape

        def input_type(module, model_dims) -> TensorType:
            declared = adapter.input_type(module, model_dims)
            return TensorType(declared.dtype, [declared.shape[0], *sizes[1:]], declared.device)

        return replace(adapter, input_type=input_type)

    return probe


def _shape(candidate: ModuleCandidate) -> str:
    """``(batch_size, num_mel_bins, sequence_length)``: the input type's dims as text."""
    return "(" + ", ".join(str(d) for d in candidate.declared_input().shape) + ")"
