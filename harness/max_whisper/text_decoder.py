"""The MAX text decoder as compiled graphs: per-stage graphs for parity, a cached step for speed.

``stages()`` lists the decoder's stages from the stage table (``harness/stages.py``), so the
parity runner can feed any stage the PyTorch activation (isolated) or MAX's own previous output
(chained), over a whole sequence.

Decoding uses two other graphs instead: ``cross_kv`` (every block's cross-attention K/V, once per
audio) and ``step`` (the whole decoder on the new tokens, updating the self-attention cache in
place). Both caches stay on the device between steps, as MAX buffers; one step is one execute.

``weights`` names how the step graph stores its matrices (``quantized.WeightsMode``): float32 by
default, exactly as before; ``float16``, ``q4_0`` ... for speed, with drift. Its graph name
carries the mode (``..._wq4_0``), so each mode compiles and caches once. Teacher-forced logits
under a mode come from ``logits`` fed the whole sequence (the step takes n tokens at once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from max.driver import Buffer
from max.dtype import DType
from max.graph import BufferType, DeviceRef, Graph, Module, TensorType, Value, ops

from harness.max_whisper import decoder, layers, selection
from harness.max_whisper.engine import to_numpy
from harness.max_whisper.graphs import BoundGraphs
from harness.max_whisper.host_arrays import HostArray, host_array
from harness.max_whisper.layers import Declared, Scope
from harness.max_whisper.weights import registry
from harness.stages import Stage, decoder_stages

Build = Callable[[Scope, Sequence[Value]], list]
FEW_ROWS = {"step"}  # graph kinds run on a token or a few at a time (see layers.linear)


class MaxTextDecoder(BoundGraphs):
    """openai-whisper's ``TextDecoder`` run by MAX Engine: stage by stage, or step by step cached.

    The cached path holds the decoding state: the audio's cross K/V, the self-attention cache and
    ``offset``, the number of positions cached. ``reset()`` starts a new sequence.

    ``weights``: the step graph's weights mode, a ``WeightsMode`` or its spec (``"float32"``,
    ``"q4_0"``, ``"float16:logits"``, see ``WeightsMode.parse``).
    """

    family = "decoder"
    units = (("embed", "block", "ln", "logits"), ("cross_kv", "step", "select"))
    # the decoding state, set per instance by reset() and the first logits() call
    offset: int = 0
    _kv: list[Buffer] | None = None
    _cache: list[Buffer] = []  # never mutated in place: _allocate_cache assigns a new list

    # -- stages, whole sequence, no cache -------------------------------------------------------

    def stages(self) -> list[Stage]:
        return decoder_stages(self.dims.n_text_layer)

    def run_stage(self, stage: Stage, x: np.ndarray, audio_features: np.ndarray) -> np.ndarray:
        """Run one stage: ``x`` is the tokens (batch, n) for ``decoder.embed``, else the previous
        stage's (batch, n, state); blocks also read ``audio_features``. float32 out."""
        if stage.kind == "embed":
            inputs = [x.astype(np.int64)]
        elif stage.kind == "block":
            inputs = [x, audio_features]
        else:
            inputs = [x]
        model = self.model(stage.kind, stage.prefix)
        outputs = model.execute(*(self.engine.to_device(np.ascontiguousarray(a)) for a in inputs))
        return to_numpy(outputs[0])

    # -- cached decoding ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the audio and the cached tokens (the cache buffers are kept for reuse)."""
        self.offset = 0
        self._kv = None

    def logits(
        self, tokens: np.ndarray, audio_features: np.ndarray, rows: Sequence[int] | None = None
    ) -> np.ndarray:
        """``step``'s logits as a host array."""
        return to_numpy(self.step(tokens, audio_features, rows))

    def step(
        self, tokens: np.ndarray, audio_features: np.ndarray, rows: Sequence[int] | None = None
    ) -> Buffer:
        """Logits (batch, n, vocab) of the ``n`` new ``tokens`` at positions ``offset ..``; with
        ``rows`` (indices into the new tokens), (batch, len(rows), vocab) of those only. They
        stay where MAX wrote them, for ``select`` or ``to_numpy``.

        The first call after ``reset`` computes the cross K/V of ``audio_features`` (batch or
        1 rows, repeated to the tokens' batch as openai-whisper broadcasts them); later calls
        reuse them, as openai-whisper's kv-cache hooks do, and ignore ``audio_features``.
        """
        batch, n = tokens.shape
        if self.offset + n > self.dims.n_text_ctx:
            raise ValueError(
                f"{self.offset} cached + {n} new tokens exceed n_text_ctx={self.dims.n_text_ctx}"
            )
        if self._kv is None:
            self._kv = self._cross_kv(audio_features, batch)
            self._allocate_cache(batch)
        rows = np.arange(n) if rows is None else np.asarray(rows)
        if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
            raise ValueError(f"rows {rows.tolist()} are not indices into {n} new tokens")
        step = self.model("step", "decoder.")
        outputs = step.execute(
            self.engine.to_device(np.ascontiguousarray(tokens, dtype=np.int64)),
            Buffer.scalar(self.offset, DType.int64),
            *self._kv,
            *self._cache,
            self.engine.to_device(rows.astype(np.int64)),
        )
        self.offset += n
        self._settle()
        return outputs[0]

    def select(
        self, logits: Buffer, suppress: Buffer, bounds: np.ndarray, timestamp_begin: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decoding's next tokens (batch,) and their log-probabilities (batch,) from the
        last row of ``step``'s logits, under openai-whisper's logit filters (``greedy.py``)."""
        outputs = self.model("select", "decoder.").execute(
            logits,
            suppress,
            self.engine.to_device(bounds),
            Buffer.scalar(timestamp_begin, DType.int64),
        )
        return to_numpy(outputs[0]), to_numpy(outputs[1])

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        """Row ``b`` of the self-attention cache becomes old row ``source_indices[b]``.

        As openai-whisper's ``PyTorchInference``: the cross K/V are left alone, since beam search
        only reorders beams of the same audio, whose cross K/V rows are equal. The rows are
        gathered in place by a graph, in order with the steps: ``Buffer.inplace_copy_from`` row
        copies were measured to land after the next step had read the cache.
        """
        batch = self._cache[0].shape[0] if self._cache else 0
        if len(source_indices) != batch:
            raise ValueError(f"{len(source_indices)} source indices for a batch of {batch}")
        if list(source_indices) == list(range(batch)):
            return
        rows = self.engine.to_device(np.asarray(source_indices, dtype=np.int64))
        self.model("reorder", "decoder.").execute(rows, *self._cache)
        self._settle()

    def _settle(self) -> None:
        """Wait for the device to finish this call's work before Python goes on.

        The caches are written in place, so the next step must not start while one is still being
        written. CPU ``execute`` has been synchronous in every check; this makes the ordering
        explicit for a few microseconds per step. It does not cure the segfaults MAX 26.7 shows in
        a long-lived process (see ``parity_tests/run_files.py``): they happen with and without it.
        """
        self.engine.session.devices[0].synchronize()

    def _cross_kv(self, audio_features: np.ndarray, batch: int) -> list[Buffer]:
        rows = audio_features.shape[0]
        if batch % rows:
            raise ValueError(f"tokens batch {batch} is not a multiple of audio batch {rows}")
        audio = np.repeat(np.asarray(audio_features, dtype=np.float32), batch // rows, axis=0)
        return self.model("cross_kv", "decoder.").execute(self.engine.to_device(audio))

    def _allocate_cache(self, batch: int) -> None:
        """Zeroed buffers: unwritten slots are masked, but 0 x NaN would still poison the sum."""
        d = self.dims
        shape = (batch, d.n_text_head, d.n_text_ctx, d.n_text_state // d.n_text_head)
        if self._cache and self._cache[0].shape == shape:
            return  # stale rows hold finite K/V of an earlier sequence, masked like zeros
        self._cache = [  # each its own zeros: a buffer over NumPy's array is a view of it
            self.engine.to_device(host_array(np.zeros(shape, np.float32), self.dtype))
            for _ in range(2 * d.n_text_layer)
        ]

    # -- graphs ---------------------------------------------------------------------------------

    def weights(
        self, kind: str, prefix: str, declared: Mapping[str, Declared]
    ) -> dict[str, HostArray]:
        """The registry for a graph of ``kind``, relative to ``prefix``, in the step's layout."""
        few_rows = kind in FEW_ROWS
        return registry(self.state_dict, prefix, declared, self.dtype, few_rows, self.state_id)

    def shape(self, kind: str) -> str:
        d = self.dims
        if kind == "select":
            return f"v{d.n_vocab}"
        shape = f"v{d.n_vocab}c{d.n_text_ctx}s{d.n_text_state}h{d.n_text_head}"
        if kind in ("block", "cross_kv", "step"):
            shape += f"a{d.n_audio_ctx}"
        if kind in ("cross_kv", "step"):
            shape += f"l{d.n_text_layer}"
        return shape

    def graph_name(self, kind: str) -> str:
        """As every graph's, plus the weights mode for the step (nothing for float32). The
        selection has no weights and no planted fault: one graph per vocabulary size."""
        if kind == "select":
            return f"whisper_{self.family}_select_{self.shape(kind)}"
        name = super().graph_name(kind)
        if kind == "step":
            return name + self.weights_mode.tag
        if kind == "cross_kv" and (kv := self.weights_mode.cross_kv_dtype):
            return name + f"_{kv.name.lower()}"
        return name

    def graph(self, kind: str, module: Module | None = None) -> Graph:
        scope = Scope.of(kind, self.engine.dtype, self.engine.device_ref, self.variant)
        scope = replace(scope, few_rows=kind in FEW_ROWS)
        if kind in ("step", "cross_kv"):
            scope = replace(scope, weights_mode=self.weights_mode)
        input_types, build = self._builders(scope)[kind]
        with Graph(self.graph_name(kind), input_types=input_types, module=module) as graph:
            graph.output(*build(scope, graph.inputs))
        return graph

    def _builders(self, scope: Scope) -> dict[str, tuple[list, Build]]:
        """Per graph kind: its input types, and how it maps its inputs to its outputs.

        Activations enter and leave the stage graphs as float32 whatever the model dtype; the
        cached K/V stay in the model dtype (the cross K/V in float16 where the weights mode says
        so: ``WeightsMode.cross_kv_dtype``), since only the step graph reads them.
        """
        d, dtype, device = self.dims, scope.dtype, scope.device
        head_dim = d.n_text_state // d.n_text_head
        tokens = TensorType(DType.int64, ["batch", "n"], device)
        state = TensorType(DType.float32, ["batch", "n", d.n_text_state], device)
        audio = TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], device)
        offset = TensorType(DType.int64, [], DeviceRef.CPU())
        kv_dtype = scope.weights_mode.cross_kv_dtype or dtype
        cross = TensorType(kv_dtype, ["batch", d.n_text_head, d.n_audio_ctx, head_dim], device)
        cache = BufferType(dtype, ["batch", d.n_text_head, d.n_text_ctx, head_dim], device)
        rows = TensorType(DType.int64, ["batch"], device)
        picked = TensorType(DType.int64, ["rows"], device)  # the step's positions with logits
        scores = TensorType(DType.float32, ["batch", "rows", d.n_vocab], device)  # step's logits
        suppress = TensorType(DType.float32, [d.n_vocab], device)
        bounds = TensorType(DType.int64, ["batch", "ranges", 2], device)
        begin = TensorType(DType.int64, [], DeviceRef.CPU())
        n_kv = 2 * d.n_text_layer

        def f32(x):
            return ops.cast(x, DType.float32)

        def cast(x):
            return ops.cast(x.tensor, dtype)

        def embed(s, i):
            start = ops.constant(0, DType.int64, DeviceRef.CPU())  # a stage starts at position 0
            return [f32(decoder.embed(s, i[0].tensor, start, decoder.token_embedding(s, d), d))]

        def reorder(source_rows, buffers):
            for buffer in buffers:
                ops.buffer_store(
                    buffer.buffer, ops.gather(ops.buffer_load(buffer.buffer), source_rows, 0)
                )
            return []

        def step(s, i):
            kv = [x.tensor for x in i[2 : 2 + n_kv]]
            buffers = [x.buffer for x in i[2 + n_kv : 2 + 2 * n_kv]]
            rows = i[-1].tensor
            return [
                f32(decoder.text_decoder_step(s, i[0].tensor, i[1].tensor, kv, buffers, rows, d))
            ]

        return {
            "embed": ([tokens], embed),
            "block": (
                [state, audio],
                lambda s, i: [f32(decoder.block_stage(s, cast(i[0]), cast(i[1]), d.n_text_head))],
            ),
            "ln": ([state], lambda s, i: [f32(decoder.ln(s, cast(i[0])))]),
            "logits": (
                [state],
                lambda s, i: [f32(decoder.logits(cast(i[0]), decoder.token_embedding(s, d)))],
            ),
            "cross_kv": (
                [audio],
                lambda s, i: [
                    layers.cast(kv, kv_dtype) for kv in decoder.all_cross_kv(s, cast(i[0]), d)
                ],
            ),
            "reorder": ([rows] + [cache] * n_kv, lambda s, i: reorder(i[0].tensor, i[1:])),
            "step": ([tokens, offset] + [cross] * n_kv + [cache] * n_kv + [picked], step),
            "select": (
                [scores, suppress, bounds, begin],
                lambda s, i: selection.selection(*(x.tensor for x in i), device),
            ),
        }
