"""openai-whisper's ``TextDecoder`` in MAX Graph: its stages, the cross K/V, and a cached step.

The same maths in two forms:

* full sequence, no cache (the parity stages, as the tracer sees ``TextDecoder.forward``):
  self-attention over the tokens given, under the causal mask;
* the cached step: ``n`` new tokens at positions ``offset .. offset + n - 1``. Their self-attention
  K/V are written in place into fixed-capacity (batch, head, n_text_ctx, head_dim) buffers, so no
  cache is ever copied or grown, and attention reads only the ``offset + n`` positions written so
  far (``SEEN``), under the causal mask. Reading the whole capacity under a mask hiding the
  unwritten slots gave the same logits (within 7e-7 relative, float32, 80 steps of tiny.en) but
  took 7-19% longer per token on base: the buffers' unwritten rows were read at every step.

Weight names are relative to the ``decoder`` module, except a block's, which are relative to the
block, so one compiled block graph serves every block (as in ``encoder.py``).

The logits are ``token_embedding.weight @ xᵀ``, on the embedding as stored: for one token MAX
does that in 3.4 ms on this CPU (synthetic:tiny), ``x @ token_embedding.weight.T`` in 8.5 ms
even with the transpose stored, and the logits are the largest matmul of a decoding step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from max.dtype import DType
from max.graph import BufferValue, DeviceRef, Dim, TensorValue, Weight, ops

from harness.max_whisper import quantized
from harness.max_whisper.layers import (
    Scope,
    attention,
    key_projection,
    layer_norm,
    linear,
    merge_heads,
    mlp,
    project_qkv,
    split_heads,
)

if TYPE_CHECKING:
    from harness.openai_whisper import ModelDimensions

SelfAttention = Callable[[Scope, TensorValue], TensorValue]
CANDIDATES, GROUP = 8, 32  # rescore_best: the best 8 groups of 32 tokens, 256 in all
SEEN = "seen"  # the cached step's positions written so far, offset + n: what attention reads
KV = tuple[TensorValue, TensorValue]


def length(dim: Dim) -> TensorValue:
    """A (possibly symbolic) dimension as a host int64 scalar, for slice bounds and ranges."""
    return ops.shape_to_tensor([dim]).reshape([])


def token_embedding(scope: Scope, dims: ModelDimensions) -> Weight:
    """The (vocab, state) embedding; one ``Weight`` object per graph, read by embed and logits."""
    return scope.weight("token_embedding.weight", [dims.n_vocab, dims.n_text_state])


def embed(
    scope: Scope,
    tokens: TensorValue,
    offset: TensorValue,
    embedding: Weight,
    dims: ModelDimensions,
) -> TensorValue:
    """token_embedding(tokens) + positional_embedding[offset : offset + n]: block 0's input."""
    n = tokens.shape[1]
    positions = scope.weight("positional_embedding", [dims.n_text_ctx, dims.n_text_state])
    x = ops.gather(embedding, tokens, axis=0)  # (batch, n, state)
    return x + ops.slice_tensor(positions, [(slice(offset, offset + length(n)), n)])


def attention_mask(
    scope: Scope,
    offset: TensorValue,
    n_query: Dim,
    n_key: Dim,
    key_count: TensorValue | None = None,
) -> TensorValue:
    """(n_query, n_key) additive mask: 0 where query ``offset + i`` may see key ``j``, else -inf.

    Causal: ``j <= offset + i``, as whisper's ``mask`` (triu of -inf). Without it (a planted
    fault) a query sees every token given so far. ``key_count``: the number of keys, when
    ``n_key`` is a name no input carries (the cached step's ``SEEN``).
    """
    stop = offset + length(n_query)
    query = ops.range(offset, stop, 1, n_query, dtype=DType.int64, device=scope.device)
    count = length(n_key) if key_count is None else key_count
    key = ops.range(0, count, 1, n_key, dtype=DType.int64, device=scope.device)
    last = query if scope.variant.causal_mask else ops.max(query, axis=0)  # (n_query,) or (1,)
    visible = ops.unsqueeze(key, 0) <= ops.unsqueeze(last, 1)  # (n_query, n_key)
    zero = ops.constant(0.0, DType.float32, scope.device)  # softmax runs in float32
    minus_inf = ops.constant(float("-inf"), DType.float32, scope.device)
    return ops.where(visible, zero, minus_inf)


def self_attention(scope: Scope, x: TensorValue, mask: TensorValue, n_head: int) -> TensorValue:
    """Masked self-attention over the whole sequence ``x``, no cache (the stage form)."""
    q, k, v = project_qkv(scope, x, n_head)
    n_state = int(x.shape[-1])
    return linear(scope / "out", merge_heads(attention(scope, q, k, v, mask)), n_state, n_state)


def cached_self_attention(
    scope: Scope,
    x: TensorValue,
    offset: TensorValue,
    cache: tuple[BufferValue, BufferValue],
    mask: TensorValue,
    n_head: int,
) -> TensorValue:
    """Self-attention of the new tokens ``x``: write their K/V at ``offset``, attend the cache's
    ``SEEN`` written positions under ``mask`` (n, SEEN).

    ``cache`` is (key, value), each a (batch, head, n_text_ctx, head_dim) buffer updated in place.
    """
    q, k, v = project_qkv(scope, x, n_head)
    n = x.shape[1]
    stop = offset + length(n)
    rows = (slice(offset, stop), n)
    for buffer, new in zip(cache, (k, v), strict=True):
        ops.buffer_store_slice(buffer, new, [slice(None), slice(None), rows, slice(None)])
    written = [slice(None), slice(None), (slice(0, stop), SEEN), slice(None)]
    k_all, v_all = (ops.slice_tensor(ops.buffer_load(buffer), written) for buffer in cache)
    n_state = int(x.shape[-1])
    out = attention(scope, q, k_all, v_all, mask)
    return linear(scope / "out", merge_heads(out), n_state, n_state)


def cross_kv(scope: Scope, xa: TensorValue, n_head: int) -> KV:
    """One block's cross-attention K/V of the audio, (batch, head, audio_ctx, head_dim) each.

    They depend on the audio only, so the cached path computes them once per audio.
    """
    n_state = int(xa.shape[-1])
    k = split_heads(scope, key_projection(scope, xa, n_state), n_head)
    v = split_heads(scope, linear(scope / "value", xa, n_state, n_state), n_head)
    return k, v


def cross_attention(scope: Scope, x: TensorValue, kv: KV, n_head: int) -> TensorValue:
    """Attention of the text ``x`` to the audio's K/V, unmasked."""
    n_state = int(x.shape[-1])
    q = split_heads(scope, linear(scope / "query", x, n_state, n_state), n_head)
    out = attention(scope, q, kv[0], kv[1], mask=None)
    return linear(scope / "out", merge_heads(out), n_state, n_state)


def residual_attention_block(
    scope: Scope, x: TensorValue, attn: SelfAttention, kv: KV, n_head: int
) -> TensorValue:
    """Pre-norm self-attention, cross-attention and MLP, each added to the residual stream.

    ``attn`` is the self-attention form (whole sequence or cached step); ``kv`` the audio's K/V.
    """
    n_state = int(x.shape[-1])
    x = x + attn(scope / "attn", layer_norm(scope / "attn_ln", x, n_state))
    h = layer_norm(scope / "cross_attn_ln", x, n_state)
    x = x + cross_attention(scope / "cross_attn", h, kv, n_head)
    return x + mlp(scope / "mlp", layer_norm(scope / "mlp_ln", x, n_state), n_state)


def block_stage(scope: Scope, x: TensorValue, xa: TensorValue, n_head: int) -> TensorValue:
    """One block over the whole sequence, its cross K/V computed from the audio ``xa``."""
    n = x.shape[1]
    mask = attention_mask(scope, ops.constant(0, DType.int64, DeviceRef.CPU()), n, n)

    def attn(s: Scope, h: TensorValue) -> TensorValue:
        return self_attention(s, h, mask, n_head)

    kv = cross_kv(scope / "cross_attn", xa, n_head)
    return residual_attention_block(scope, x, attn, kv, n_head)


def ln(scope: Scope, x: TensorValue) -> TensorValue:
    return layer_norm(scope / "ln", x, int(x.shape[-1]))


def logits(x: TensorValue, embedding: Weight) -> TensorValue:
    """x @ token_embedding.weight.T, (batch, n, vocab), computed as (weight @ xᵀ)ᵀ (see above)."""
    batch, n, n_state = x.shape
    columns = ops.permute(ops.reshape(x, [batch * n, n_state]), [1, 0])  # (state, batch·n)
    scores = ops.permute(embedding @ columns, [1, 0])  # (batch·n, vocab)
    return ops.reshape(scores, [batch, n, embedding.shape[0]])


def stored_logits(
    scope: Scope, x: TensorValue, embedding: Weight, dims: ModelDimensions
) -> TensorValue:
    """``logits`` on a copy of the embedding in ``scope.weights_mode``'s encoding, (batch, n,
    vocab): the decoding step's largest read, 80 MB in float32 for tiny, 11 MB in q4_0. Where
    the mode says ``rescore``, the best candidates are computed again from ``embedding``."""
    batch, n, n_state = x.shape
    rows = ops.reshape(x, [batch * n, n_state])
    mode = scope.weights_mode
    scores = quantized.project(
        scope.weight, rows, "token_embedding.weight", dims.n_vocab, mode.encoding
    )
    if mode.rescore:
        scores = rescore_best(scores, rows, embedding)
    return ops.reshape(scores, [batch, n, dims.n_vocab])


def rescore_best(scores: TensorValue, rows: TensorValue, embedding: Weight) -> TensorValue:
    """``scores`` (rows, vocab), rounded logits of ``rows`` (rows, state), with those of the best
    ``CANDIDATES`` groups of ``GROUP`` consecutive tokens computed again from the float32
    ``embedding``: every token among the best ``CANDIDATES`` by its rounded score is rescored.

    Groups, because MAX's ``top_k`` over base's 51865 scores took 5.5 ms on this CPU (Xeon,
    2026-12-05, a random activation, 200 runs in turns), over the 1621 groups' maxima ~0.15 ms
    beside the 1.2-1.5 ms q6_k product; the whole rescoring cost ~0.2 ms a token in the
    reports (base q6_k:logits+float16 10.55 ms, q6_k_top:logits+float16 10.75).
    """
    n_rows, n_vocab = rows.shape[0], int(scores.shape[1])
    groups = -(-n_vocab // GROUP)
    padded = ops.pad(scores, [0, 0, 0, groups * GROUP - n_vocab], value=float("-inf"))
    best = ops.max(ops.reshape(padded, [n_rows, groups, GROUP]), axis=-1)
    _, picked = ops.top_k(ops.reshape(best, [n_rows, groups]), CANDIDATES, axis=-1)
    within = ops.range(0, GROUP, 1, GROUP, dtype=DType.int64, device=scores.device)
    tokens = ops.reshape(ops.unsqueeze(picked * GROUP, -1) + within, [n_rows, CANDIDATES * GROUP])
    in_vocab = ops.min(tokens, n_vocab - 1)  # the last group's padding: rescored, then cut off
    candidates = ops.gather(embedding, in_vocab, axis=0)  # (rows, candidates, state)
    exact = ops.squeeze(candidates @ ops.unsqueeze(rows, -1), -1)
    rescored = ops.scatter(padded, exact, tokens, axis=-1)
    return ops.slice_tensor(rescored, [slice(None), slice(0, n_vocab)])


def all_cross_kv(scope: Scope, xa: TensorValue, dims: ModelDimensions) -> list[TensorValue]:
    """Every block's cross K/V, flat as [k0, v0, k1, v1, ...]: the once-per-audio graph."""
    return [
        t
        for i in range(dims.n_text_layer)
        for t in cross_kv(scope / "blocks" / i / "cross_attn", xa, dims.n_text_head)
    ]


def text_decoder_step(
    scope: Scope,
    tokens: TensorValue,
    offset: TensorValue,
    kv: Sequence[TensorValue],
    cache: Sequence[BufferValue],
    rows: TensorValue,
    dims: ModelDimensions,
) -> TensorValue:
    """Logits (batch, len(rows), vocab) of ``tokens`` (batch, n) at positions ``offset ..``, for
    the new tokens' indices ``rows`` only; updates the self-attention cache for all n.

    ``kv`` is ``all_cross_kv``'s output and ``cache`` the self-attention buffers, both flat
    [k0, v0, k1, v1, ...]. ``rows`` exists for the prompt of a later 30 s window: decoding reads
    two of its ~90 positions' logits, and computing all of them took 160-200 ms of a 1.9 s
    transcription (tiny.en, float16 weights). The logits (and, if it says so, the linear layers)
    read their matrices in ``scope.weights_mode`` (float32 by default).
    """
    n_layer, n_head = dims.n_text_layer, dims.n_text_head
    embedding = token_embedding(scope, dims)
    x = embed(scope, tokens, offset, embedding, dims)
    n = tokens.shape[1]
    mask = attention_mask(scope, offset, n, Dim(SEEN), offset + length(n))
    for i in range(n_layer):
        block_cache = (cache[2 * i], cache[2 * i + 1])

        def attn(s: Scope, h: TensorValue, block_cache=block_cache) -> TensorValue:
            return cached_self_attention(s, h, offset, block_cache, mask, n_head)

        x = residual_attention_block(
            scope / "blocks" / i, x, attn, (kv[2 * i], kv[2 * i + 1]), n_head
        )
    x = ln(scope, ops.gather(x, rows, axis=1))  # (batch, len(rows), state)
    if scope.weights_mode.encoding == "float32":
        return logits(x, embedding)
    return stored_logits(scope, x, embedding, dims)
