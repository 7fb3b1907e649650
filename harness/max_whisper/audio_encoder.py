"""The MAX audio encoder as compiled graphs: one per kind of stage, plus the fused whole.

``stages()`` lists the encoder's stages from the stage table (``harness/stages.py``), so the
parity runner can feed any stage either the PyTorch activation (isolated) or MAX's own previous
output (chained).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from max.dtype import DType
from max.graph import Graph, Module, TensorType, TensorValue, ops

from harness.errors import HarnessError
from harness.max_whisper import encoder
from harness.max_whisper.engine import to_numpy
from harness.max_whisper.graphs import BoundGraphs
from harness.max_whisper.layers import Scope
from harness.stages import Stage, encoder_stages


class MaxAudioEncoder(BoundGraphs):
    """openai-whisper's ``AudioEncoder`` run by MAX Engine, stage by stage or fused."""

    family = "encoder"
    units = (("conv1", "conv2", "block", "ln_post"),)

    def stages(self) -> list[Stage]:
        return encoder_stages(self.dims.n_audio_layer)

    def run_stage(self, stage: Stage, x: np.ndarray) -> np.ndarray:
        """Run one stage on ``x`` (mel for conv1, else (batch, frames, state)); float32 out."""
        if stage.kind == "conv1":
            self.check_mel(x)
        return self._run(stage.kind, stage.prefix, x)

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """The fused encoder: mel (batch, n_mels, 2·n_audio_ctx) -> (batch, n_audio_ctx, state)."""
        self.check_mel(mel)
        return self._run("encoder", "encoder.", mel)

    def check_mel(self, mel: np.ndarray) -> None:
        """A wrong mel is a user error, said in one line, not a MAX shape failure."""
        n_mels, frames = self.dims.n_mels, 2 * self.dims.n_audio_ctx
        if mel.ndim != 3 or mel.shape[1:] != (n_mels, frames):
            raise HarnessError(
                f"mel has shape {mel.shape}; this checkpoint's encoder takes "
                f"(batch, {n_mels}, {frames}): {n_mels} mel bins, one 30 s window"
            )

    def _run(self, kind: str, prefix: str, x: np.ndarray) -> np.ndarray:
        model = self.model(kind, prefix)
        return to_numpy(model.execute(self.engine.to_device(np.ascontiguousarray(x)))[0])

    def shape(self, kind: str) -> str:
        d = self.dims
        shape = f"m{d.n_mels}c{d.n_audio_ctx}s{d.n_audio_state}h{d.n_audio_head}"
        return shape + f"l{d.n_audio_layer}" if kind == "encoder" else shape

    def graph(self, kind: str, module: Module | None = None) -> Graph:
        """The uncompiled graph of one kind of stage (``conv1`` ... ``ln_post``) or ``encoder``."""
        d, dtype = self.dims, self.engine.dtype
        frames = 2 * d.n_audio_ctx
        input_shape = {
            "conv1": ["batch", d.n_mels, frames],
            "encoder": ["batch", d.n_mels, frames],
            "conv2": ["batch", frames, d.n_audio_state],
        }.get(kind, ["batch", d.n_audio_ctx, d.n_audio_state])
        build = self._builders()[kind]
        scope = Scope.of(kind, dtype, self.engine.device_ref, self.variant)
        input_type = TensorType(DType.float32, input_shape, scope.device)
        with Graph(self.graph_name(kind), input_types=[input_type], module=module) as graph:
            x = ops.cast(graph.inputs[0].tensor, dtype)
            graph.output(ops.cast(build(scope, x), DType.float32))
        return graph

    def _builders(self) -> dict[str, Callable[[Scope, TensorValue], TensorValue]]:
        d = self.dims
        return {
            "conv1": lambda s, x: encoder.conv1(s, x, d.n_audio_state),
            "conv2": lambda s, x: encoder.conv2(s, x, d.n_audio_ctx),
            "block": lambda s, x: encoder.residual_attention_block(s, x, d.n_audio_head),
            "ln_post": encoder.ln_post,
            "encoder": lambda s, x: encoder.audio_encoder(s, x, d),
        }
