"""openai-whisper's ``AudioEncoder`` in MAX Graph, one function per stage.

Activations cross stage boundaries as (batch, frames, state), channels last: a convolution is
one product over rows of 3 frames' channels, and every later stage is (batch, ctx, state)
anyway. Weight names are relative to the ``encoder`` module, except a block's, which are
relative to the block, so that one compiled block graph serves every block.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from max.graph import Graph, TensorValue, ops

from harness.max_whisper.layers import (
    Scope,
    attention,
    declare_call,
    gelu,
    layer_norm,
    linear,
    merge_heads,
    mlp,
    project_qkv,
)

if TYPE_CHECKING:
    from harness.openai_whisper import ModelDimensions


def conv1d(scope: Scope, x: TensorValue, n_in: int, n_out: int, stride: int, padding: int):
    """``nn.Conv1d(kernel_size=3)`` over (batch, frames, n_in) as one matrix product (im2col).

    Each output frame reads its 3 input frames side by side, (batch, out, 3·n_in), times the
    RSCF weight read as (3·n_in, n_out). MAX 26.7's conv2d on the same input as one NHWC row
    gave the same floats, slower on this CPU: tiny's conv1 stage took 11.5 ms that way and 7.6
    this way, conv2 19.7 and 13.4.
    """
    frames = int(x.shape[1])
    out = (frames + 2 * padding - 3) // stride + 1
    x = ops.pad(x, [0, 0, padding, padding, 0, 0])  # (batch, frames + 2·padding, n_in)
    taps = [
        ops.slice_tensor(x, [slice(None), slice(k, k + stride * out, stride), slice(None)])
        for k in range(3)
    ]
    columns = ops.concat(taps, axis=-1)  # (batch, out, 3·n_in): frames t-1, t, t+1 for padding 1
    weight = ops.reshape(scope.weight("weight", [1, 3, n_in, n_out]), [3 * n_in, n_out])
    return columns @ weight + scope.weight("bias", [n_out])


def conv1(scope: Scope, mel: TensorValue, n_state: int) -> TensorValue:
    """GELU(conv1(mel)): (batch, n_mels, frames) -> (batch, frames, state)."""
    n_mels = int(mel.shape[1])
    x = ops.permute(mel, [0, 2, 1])  # (batch, frames, n_mels)
    return gelu(scope, conv1d(scope / "conv1", x, n_mels, n_state, stride=1, padding=1))


def conv2(scope: Scope, x: TensorValue, n_ctx: int) -> TensorValue:
    """GELU(conv2(x)) with stride 2, plus the positional embedding: the input of block 0."""
    n_state = int(x.shape[-1])
    x = conv1d(scope / "conv2", x, n_state, n_state, stride=2, padding=scope.variant.conv2_padding)
    x = gelu(scope, x)
    return x + scope.weight("positional_embedding", [n_ctx, n_state])


def self_attention(scope: Scope, x: TensorValue, n_head: int) -> TensorValue:
    """openai-whisper's ``MultiHeadAttention`` without mask or cache (the encoder's case)."""
    n_state = int(x.shape[-1])
    heads = attention(scope, *project_qkv(scope, x, n_head), mask=None)
    return linear(scope / "out", merge_heads(heads), n_state, n_state)


def residual_attention_block(scope: Scope, x: TensorValue, n_head: int) -> TensorValue:
    """Pre-norm self-attention and MLP, each added to the residual stream."""
    n_state = int(x.shape[-1])
    x = x + self_attention(scope / "attn", layer_norm(scope / "attn_ln", x, n_state), n_head)
    h = mlp(scope / "mlp", layer_norm(scope / "mlp_ln", x, n_state), n_state)
    return x + h if scope.variant.mlp_residual else h  # planted fault: the residual forgotten


def ln_post(scope: Scope, x: TensorValue) -> TensorValue:
    if not scope.variant.ln_post:  # planted fault: the final layer norm forgotten
        return x
    return layer_norm(scope / "ln_post", x, int(x.shape[-1]))


def audio_encoder(scope: Scope, mel: TensorValue, dims: ModelDimensions) -> TensorValue:
    """The whole encoder in one graph: mel (batch, n_mels, frames) -> (batch, ctx, state).

    The block is one subgraph called once per layer with that layer's weight prefix, so the
    compiler handles it once: compile time no longer grows with depth (32 layers in large).
    """
    x = conv2(scope, conv1(scope, mel, dims.n_audio_state), dims.n_audio_ctx)
    block = Graph.current.add_subgraph(
        "residual_attention_block", input_types=[x.type], devices=[scope.device]
    )
    with block:
        inner = replace(scope, prefix="", namespace="", placeholder=True)
        block.output(residual_attention_block(inner, block.inputs[0].tensor, dims.n_audio_head))
    for i in range(dims.n_audio_layer):
        prefix = (scope / "blocks" / i).prefix + "."
        declare_call(block, prefix)
        x = ops.call(block, x, prefix=scope.namespace + prefix)[0].tensor
    return ln_post(scope, x)
