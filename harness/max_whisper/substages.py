"""The sub-modules of MAX's blocks, one small graph per kind: what the bisection inside a
divergent block runs (``compare/bisect.py``).

Sub-stage graphs name their weights relative to the sub-module (``weight``, ``query.weight``,
``0.weight`` ...), so one compiled layer-norm graph serves ``attn_ln``, ``mlp_ln`` and
``cross_attn_ln`` alike, in every block, encoder or decoder (whose widths are equal in every
whisper model).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, Graph, Module, TensorType, TensorValue, ops

from harness.max_whisper import decoder, encoder
from harness.max_whisper.engine import to_numpy
from harness.max_whisper.graphs import BoundGraphs
from harness.max_whisper.layers import Scope, layer_norm, mlp
from harness.openai_whisper import ModelDimensions
from harness.stages import Stage


class MaxSubStages(BoundGraphs):
    """The sub-modules of MAX's blocks, one small graph per kind, for ``variant``."""

    family = "sub"
    units = (("ln", "attn", "mlp", "masked_attn", "cross_attn"),)

    def run(self, block: Stage, sub_stage: str, x: np.ndarray, xa: np.ndarray | None) -> np.ndarray:
        """Sub-module ``sub_stage`` (``attn_ln``, ``attn`` ...) of the block stage ``block``."""
        kind = self._kind(block, sub_stage)
        inputs = [x, xa] if kind == "cross_attn" else [x]
        model = self.model(kind, f"{block.prefix}{sub_stage}.")
        buffers = [self.engine.to_device(np.ascontiguousarray(a)) for a in inputs]
        return to_numpy(model.execute(*buffers)[0])

    def _kind(self, block: Stage, sub_stage: str) -> str:
        if sub_stage.endswith("ln"):
            return "ln"
        if sub_stage == "attn":
            return "masked_attn" if block.side == "decoder" else "attn"
        return sub_stage  # mlp, cross_attn

    def shape(self, kind: str) -> str:
        d = self.dims
        return f"s{d.n_audio_state}h{d.n_audio_head}a{d.n_audio_ctx}"

    def graph(self, kind: str, module: Module | None = None) -> Graph:
        """float32 in and out whatever the model dtype, like the stage graphs."""
        d, dtype = self.dims, self.engine.dtype
        scope = Scope.of(kind, dtype, self.engine.device_ref, self.variant)
        state = TensorType(DType.float32, ["batch", "ctx", d.n_text_state], scope.device)
        audio = TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], scope.device)
        build = _builders(d)[kind]
        input_types = [state, audio] if kind == "cross_attn" else [state]
        with Graph(self.graph_name(kind), input_types=input_types, module=module) as graph:
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
        "mlp": lambda scope, x: mlp(scope, x, int(x.shape[-1])),
        "attn": lambda scope, x: encoder.self_attention(scope, x, d.n_audio_head),
        "masked_attn": masked_attn,
        "cross_attn": cross_attn,
    }
