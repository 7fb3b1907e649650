"""A deliberately broken candidate, written as a user would write an adapter file: MAX's own
encoder with the shipped adapter's fixes, but its attention split into twice as many heads of
half the width. Every weight and shape still fits; only the numbers are wrong, from blocks.0 on.
"""

from dataclasses import replace
from types import SimpleNamespace

from harness.candidates.adapters import max_pipelines_encoder as upstream


def construct_with_doubled_heads(dims, dtype, device):
    config = SimpleNamespace(**vars(upstream.hugging_face_config(dims)))
    config.encoder_attention_heads = config.n_heads = 2 * dims.n_audio_head  # the bug
    return upstream.encoder.WhisperEncoder(config, dtype, device)


ADAPTER = replace(
    upstream.ADAPTER.with_fixes(), name="wrong-head-split", construct=construct_with_doubled_heads
)
