"""The planted faults: each a porting bug in the MAX model, and where parity must first see it.

Each ``Fault`` is one build-time ``Variant`` of the MAX model (PyTorch is never touched), the
stage where the harness must localise it and, inside a block stage, the sub-module. ``CONTROL``
is the faithful port, which no stage may flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.max_whisper.variant import FAITHFUL, Variant
from harness.paths import FIXTURES

# The fixture clip every fault is run on: traced for the stage checks, transcribed for
# ``--transcripts``.
CLIP = FIXTURES / "audio" / "short.wav"


@dataclass(frozen=True)
class Fault:
    """A planted porting bug: the variant that builds it and where parity must first see it."""

    name: str
    variant: Variant
    expected_stage: str | None  # None: nothing may diverge (the control)
    description: str
    expected_sub_stage: str | None = None  # inside a block stage: which sub-module


CONTROL = Fault("none", FAITHFUL, None, "the faithful port: no stage may diverge")

CATALOGUE: tuple[Fault, ...] = (
    Fault(
        "mel_no_log_clamp",
        Variant(mel_log_clamp=False),
        "mel",
        "log-mel not clamped to 8 decades below its peak: silence falls to the 1e-10 floor",
    ),
    Fault(
        "gelu_tanh",
        Variant(gelu_approximate="tanh"),
        "conv1",
        "tanh-approximate GELU (common in other ports) instead of torch's exact erf GELU",
    ),
    Fault(
        "conv2_padding_0",
        Variant(conv2_padding=0),
        "conv2",
        "conv2 without padding: 1499 frames, which cannot take the 1500 positional embeddings",
    ),
    Fault(
        "positional_shift_1",
        Variant(positional_shift=1),
        "conv2",
        "the encoder's positional embedding rolled by one frame",
    ),
    Fault(
        "attention_scale_1_over_d",
        Variant(attention_scale_power=1.0),
        "blocks.0",
        "attention scores scaled by 1/d instead of 1/sqrt(d)",
        "attn",
    ),
    Fault(
        "heads_not_transposed",
        Variant(heads_transposed=False),
        "blocks.0",
        "heads split by a reshape alone, without the transpose: frames and heads mixed",
        "attn",
    ),
    Fault(
        "softmax_over_queries",
        Variant(softmax_over_queries=True),
        "blocks.0",
        "attention softmax over the query axis instead of the key axis",
        "attn",
    ),
    Fault(
        "key_bias",
        Variant(key_bias=True),
        None,
        "a bias on the key projection, which whisper's has not (the value's bias borrowed). "
        "Undetectable, rightly: it adds q·b to every score of a query's row, and softmax is "
        "invariant to that shift, so the output changes by float32 round-off only",
    ),
    Fault(
        "layer_norm_eps_1e-6",
        Variant(layer_norm_eps=1e-6),
        "blocks.0",
        "layer norm epsilon 1e-6 (a common default) instead of torch's 1e-5",
        "attn_ln",
    ),
    Fault(
        "mlp_no_residual",
        Variant(mlp_residual=False),
        "blocks.0",
        "encoder block returns its MLP's output without adding the residual stream",
        "residual",
    ),
    Fault(
        "no_ln_post",
        Variant(ln_post=False),
        "ln_post",
        "the encoder's final layer norm forgotten",
    ),
    Fault(
        "no_causal_mask",
        Variant(causal_mask=False),
        "decoder.blocks.0",
        "decoder self-attention without its causal mask: tokens see the future",
        "attn",
    ),
    Fault(
        "cross_kv_other_block",
        Variant(cross_kv_from_block=1),
        "decoder.blocks.0",
        "decoder block i cross-attends with block i+1's keys and values",
        "cross_attn",
    ),
)

# Not porting bugs but MAX's own, kept reproducible (``python -m harness repro --fault``): the
# ``faults`` command runs the catalogue above only.
MAX_BUGS: tuple[Fault, ...] = (
    Fault(
        "fused_masked_attention",
        Variant(fused_masked_attention=True),
        "decoder.blocks.0",
        "masked attention written as softmax((q kᵀ + mask) · scale) v: MAX 26.7 fuses the mask, "
        "built in the graph, into the softmax and silently loses it",
        "attn",
    ),
)
