"""One stage as the harness ran it, captured for a standalone reproduction.

A ``Case`` holds what ``repro.py`` needs besides its template: the stage's inputs as the harness
fed them (isolated: PyTorch's activations), PyTorch's output and the float64 arbiter's, the
tolerance, the metrics the harness measured, the constants its template reads (dims, the variant's
switches) and the tensors its weights are read from. ``stage_case`` captures one from the same
``Check`` the fault localiser runs (``faults/localise.py``), so the repro sees what the harness saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from whisper.audio import mel_filters

from harness.compare import tolerances
from harness.compare.metrics import Metrics, compare
from harness.compare.tolerances import HIGHER_IS_BETTER
from harness.faults.graph_errors import MaxGraphError, max_graph_errors
from harness.faults.localise import Check, checks
from harness.faults.reference_trace import ReferenceTrace
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.max_whisper.mel import dft_basis
from harness.max_whisper.variant import Variant
from harness.reference.arbiter import float64_stage, run_float64
from harness.repro.script import variant_constants
from harness.stages import MEL, Stage, stage_named

Limits = dict[str, tuple[float, str]]  # metric: (bound, "min" or "max")


@dataclass
class Case:
    """What one ``repro.py`` reproduces: a graph of ``kind`` on these inputs, against these
    expected outputs, judged by ``limits``."""

    kind: str  # a section of templates/stages.py.tmpl
    title: str  # one line: what is reproduced, on which checkpoint, with which fault
    variant: Variant
    constants: dict[str, Any]
    inputs: dict[str, np.ndarray]
    symbolic: dict[str, dict[int, str]]  # per input, the axes the graph leaves symbolic
    expected: dict[str, np.ndarray]  # "torch", "float64"
    limits: Limits
    tensors: Mapping[str, torch.Tensor | np.ndarray]  # the checkpoint's, by name
    reported: Metrics | None = None  # what the harness measured
    reported_error: str | None = None  # or why MAX refused the harness's graph
    notes: list[str] = field(default_factory=list)

    def fails(self) -> bool:
        """Whether the harness's own run broke a limit or MAX refused the graph."""
        if self.reported is None:
            return self.reported_error is not None
        return bool(breaks(self.reported, self.limits))

    def input_types(self) -> dict[str, tuple[str, list[int | str]]]:
        """Each input's dtype and shape, symbolic axes named, as ``INPUTS`` in the script."""
        types = {}
        for name, array in self.inputs.items():
            shape: list[int | str] = list(array.shape)
            for axis, dim in self.symbolic.get(name, {}).items():
                shape[axis] = dim
            types[name] = (str(array.dtype), shape)
        return types


def breaks(metrics: Metrics, limits: Limits) -> list[str]:
    """The metrics over their limits; NaN breaks every limit."""
    return [
        metric
        for metric, (bound, better) in limits.items()
        if not (metrics[metric] >= bound if better == "min" else metrics[metric] <= bound)
    ]


def limits_for(kind: str) -> Limits:
    """The float32 tolerances of ``kind`` (``isolated``, ``mel``), each with its direction."""
    table = tolerances.load("float32")
    return {
        metric: (bound, "min" if metric in HIGHER_IS_BETTER else "max")
        for metric, bound in table.limits[kind].items()
    }


def template_kind(stage: Stage | None) -> str:
    """The template section of a stage: ``mel``, ``encoder_block``, ``decoder_block``, ``ln``..."""
    if stage is None:
        return "mel"
    return f"{stage.side}_block" if stage.kind == "block" else stage.kind


def input_names(kind: str) -> tuple[str, ...]:
    return {"mel": ("audio",), "conv1": ("mel",), "embed": ("tokens",)}.get(
        kind, ("x", "xa") if kind == "decoder_block" else ("x",)
    )


def symbolic_axes(kind: str) -> dict[str, dict[int, str]]:
    """The axes the harness's graph of ``kind`` leaves symbolic: the repro compiles the same."""
    if kind == "mel":
        return {"audio": {0: "samples"}}
    names = input_names(kind)
    if kind in ("embed", "decoder_block", "ln", "logits"):
        return {names[0]: {0: "batch", 1: "n"}} | {n: {0: "batch"} for n in names[1:]}
    return {name: {0: "batch"} for name in names}


def model_constants(checkpoint: Checkpoint, stage: Stage | None, variant: Variant) -> dict:
    """Dims, weight prefixes and the variant's switches, as the templates name them."""
    d = checkpoint.dims
    encoder = stage is None or stage.side == "encoder"
    values = variant_constants(variant) | {
        "PREFIX": stage.prefix if stage else "",
        "N_STATE": d.n_audio_state if encoder else d.n_text_state,
        "N_HEAD": d.n_audio_head if encoder else d.n_text_head,
        "N_CTX": d.n_audio_ctx,
        "N_MELS": d.n_mels,
        "N_VOCAB": d.n_vocab,
        "N_TEXT_CTX": d.n_text_ctx,
    }
    if stage is not None and stage.reads_audio:
        source = (stage.block + variant.cross_kv_from_block) % d.n_text_layer
        values["CROSS_KV"] = f"decoder.blocks.{source}.cross_attn"
    return values


def checkpoint_tensors(checkpoint: Checkpoint) -> dict[str, torch.Tensor | np.ndarray]:
    """The checkpoint's tensors, plus the log-mel's constants under the names its graph uses."""
    tensors: dict[str, torch.Tensor | np.ndarray] = dict(checkpoint.model.state_dict())
    tensors["dft_basis"] = dft_basis()
    tensors["mel_filters"] = mel_filters("cpu", checkpoint.dims.n_mels).T.contiguous()
    return tensors


def find_check(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, ref: ReferenceTrace, stage: str
) -> Check:
    """The localiser's isolated check of ``stage`` (nothing is compiled to find it)."""
    for check in checks(checkpoint, engine, variant, ref):
        if check.stage == stage:
            return check
    raise ValueError(f"no stage {stage!r}")  # stage names are validated before this


def stage_case(
    checkpoint: Checkpoint,
    engine: Engine,
    variant: Variant,
    ref: ReferenceTrace,
    stage_name: str,
    title: str,
) -> Case:
    """Capture ``stage_name`` as the localiser checks it, running the harness's MAX graph once
    for the metrics it reports (or the error MAX refused it with)."""
    check = find_check(checkpoint, engine, variant, ref, stage_name)
    stage = None if stage_name == MEL else stage_named(checkpoint.dims, stage_name)
    kind = template_kind(stage)
    inputs = dict(zip(input_names(kind), (_stored(a) for a in check.inputs), strict=True))
    exact = run_float64(float64_stage(checkpoint.model, stage_name), check.inputs)
    case = Case(
        kind=kind,
        title=title,
        variant=variant,
        constants=model_constants(checkpoint, stage, variant),
        inputs=inputs,
        symbolic=symbolic_axes(kind),
        expected={"torch": check.expected, "float64": exact},
        limits=limits_for(check.tolerance_kind),
        tensors=checkpoint_tensors(checkpoint),
    )
    case.reported, case.reported_error = harness_metrics(check)
    return case


def harness_metrics(check: Check) -> tuple[Metrics | None, str | None]:
    """The harness's own MAX run of ``check``: its metrics, or why MAX refused the graph."""
    try:
        with max_graph_errors():
            output = check.run()
    except MaxGraphError as error:
        return None, str(error)
    if output.shape != check.expected.shape:
        return None, f"output shape mismatch: MAX {output.shape}, PyTorch {check.expected.shape}"
    return compare(output, check.expected), None


def _stored(array: np.ndarray) -> np.ndarray:
    """Token ids as int64, everything else float32, as the harness feeds its graphs."""
    return np.ascontiguousarray(array, dtype=np.int64 if array.dtype.kind in "iu" else np.float32)
