"""Inside a divergent block: which of its sub-modules is wrong.

A block is ``attn_ln`` → ``attn`` → (``cross_attn_ln`` → ``cross_attn``) → ``mlp_ln`` → ``mlp``,
tied together by residual additions. Hooks on openai-whisper's block record what each sub-module
is fed and returns; MAX computes each sub-module in a small graph built from the same layer
functions as its block graphs, fed the recorded PyTorch input, so each sub-stage's error is its
own. A block that diverges while all its sub-modules agree has its fault in what lies between
them: the residual additions, reported as the sub-stage ``residual``.

Sub-stage graphs name their weights relative to the sub-module (``weight``, ``query.weight``,
``0.weight`` ...), so one compiled layer-norm graph serves ``attn_ln``, ``mlp_ln`` and
``cross_attn_ln`` alike, in every block, encoder or decoder (whose widths are equal in every
whisper model).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, ops
from torch import nn
from whisper.model import ModelDimensions, ResidualAttentionBlock

from harness.compare.metrics import Metrics, compare
from harness.compare.tolerances import Tolerances
from harness.max_whisper import decoder, encoder
from harness.max_whisper.engine import to_numpy
from harness.max_whisper.graphs import BoundGraphs
from harness.max_whisper.layers import Scope, layer_norm
from harness.max_whisper.weights import registry

ENCODER_SUB_STAGES = ("attn_ln", "attn", "mlp_ln", "mlp")
DECODER_SUB_STAGES = ("attn_ln", "attn", "cross_attn_ln", "cross_attn", "mlp_ln", "mlp")
RESIDUAL = "residual"
Capture = dict[str, tuple[np.ndarray, np.ndarray]]  # sub-stage: (its input, its output)


@torch.no_grad()
def trace_block(
    block: ResidualAttentionBlock,
    x: np.ndarray,
    xa: np.ndarray | None = None,
    mask: torch.Tensor | None = None,
) -> Capture:
    """Run openai-whisper's ``block`` on ``x`` and record each sub-module's input and output."""
    capture: Capture = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple, output) -> None:
            out = output[0] if isinstance(output, tuple) else output  # attention returns (out, qk)
            capture[name] = (inputs[0].float().numpy().copy(), out.float().numpy().copy())

        return hook

    names = DECODER_SUB_STAGES if block.cross_attn is not None else ENCODER_SUB_STAGES
    handles = [getattr(block, name).register_forward_hook(record(name)) for name in names]
    try:
        audio = None if xa is None else torch.from_numpy(xa)
        block(torch.from_numpy(x), audio, mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return capture


class MaxSubStages(BoundGraphs):
    """The sub-modules of MAX's blocks, one small graph per kind, for ``variant``."""

    family = "sub"

    def run(self, block: str, sub_stage: str, x: np.ndarray, xa: np.ndarray | None) -> np.ndarray:
        """Sub-module ``sub_stage`` of ``block`` (``encoder.blocks.0.``, ``decoder.blocks.1.``)."""
        kind = self._kind(block, sub_stage)
        inputs = [x, xa] if kind == "cross_attn" else [x]
        model = self.model(kind, f"{block}{sub_stage}.")
        buffers = [self.engine.to_device(np.ascontiguousarray(a)) for a in inputs]
        return to_numpy(model.execute(*buffers)[0])

    def _kind(self, block: str, sub_stage: str) -> str:
        if sub_stage.endswith("ln"):
            return "ln"
        if sub_stage == "attn":
            return "masked_attn" if block.startswith("decoder.") else "attn"
        return sub_stage  # mlp, cross_attn

    def weights(self, kind: str, prefix: str, graph: Graph) -> dict[str, torch.Tensor]:
        weights = super().weights(kind, prefix, graph)
        return weights | self._cross_kv_weights(prefix) if kind == "cross_attn" else weights

    def _cross_kv_weights(self, prefix: str) -> dict[str, torch.Tensor]:
        """Block i's cross-attention keys and values are block i + ``cross_kv_from_block``'s
        (itself in the faithful model), as MAX's text decoder binds them."""
        n_layer = self.dims.n_text_layer
        source = (int(prefix.split(".")[2]) + self.variant.cross_kv_from_block) % n_layer
        names = ["key.weight", "value.weight", "value.bias"]
        return registry(self.state_dict, f"decoder.blocks.{source}.cross_attn.", names, self.dtype)

    def shape(self, kind: str) -> str:
        d = self.dims
        return f"s{d.n_audio_state}h{d.n_audio_head}a{d.n_audio_ctx}"

    def graph(self, kind: str) -> Graph:
        """float32 in and out whatever the model dtype, like the stage graphs."""
        d, dtype = self.dims, self.engine.dtype
        scope = Scope("", dtype, self.engine.device_ref, self.variant)
        state = TensorType(DType.float32, ["batch", "ctx", d.n_text_state], scope.device)
        audio = TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], scope.device)
        build = _builders(d)[kind]
        input_types = [state, audio] if kind == "cross_attn" else [state]
        with Graph(self.graph_name(kind), input_types=input_types) as graph:
            inputs = [ops.cast(value.tensor, dtype) for value in graph.inputs]
            graph.output(ops.cast(build(scope, *inputs), DType.float32))
        return graph


def _builders(d: ModelDimensions) -> dict[str, Callable[..., TensorValue]]:
    """Each kind of sub-module through the layer functions its block graphs use."""

    def masked_attn(scope: Scope, x: TensorValue) -> TensorValue:
        n = x.shape[1]
        mask = decoder.attention_mask(scope, ops.constant(0, DType.int64, DeviceRef.CPU()), n, n)
        return decoder.self_attention(scope, x, mask, d.n_text_head)

    def cross_attn(scope: Scope, x: TensorValue, xa: TensorValue) -> TensorValue:
        kv = decoder.cross_kv(scope, xa, d.n_text_head)
        return decoder.cross_attention(scope, x, kv, d.n_text_head)

    return {
        "ln": lambda scope, x: layer_norm(scope, x, int(x.shape[-1])),
        "mlp": lambda scope, x: encoder.mlp(scope, x, int(x.shape[-1])),
        "attn": lambda scope, x: encoder.self_attention(scope, x, d.n_audio_head),
        "masked_attn": masked_attn,
        "cross_attn": cross_attn,
    }


def bisect(
    candidate: MaxSubStages,
    block: str,
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
