"""The PyTorch reference: stage activations captured by forward hooks on openai-whisper itself.

Nothing here re-implements Whisper: the hooks record what openai-whisper's own modules compute,
under the stage names the MAX side uses. Every activation is returned as float32 NumPy in the
layout MAX stages exchange: (batch, frames, channels).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import whisper
from torch import nn
from torch.utils.hooks import RemovableHandle
from whisper.model import AudioEncoder, ResidualAttentionBlock, TextDecoder

from harness.stages import MEL, TOKENS, Stage, decoder_stages, encoder_stages

Trace = dict[str, np.ndarray]


def window_mel(audio: np.ndarray | torch.Tensor, n_mels: int) -> np.ndarray:
    """openai-whisper's log-mel of the first 30 s window of ``audio`` (padded or trimmed as its
    ``transcribe`` does): (1, n_mels, 3000) float32, the input every encoder trace starts from."""
    window = whisper.pad_or_trim(torch.as_tensor(audio))
    return whisper.log_mel_spectrogram(window, n_mels).numpy()[None]


@contextmanager
def _hooks(registrations: list[RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in registrations:
            handle.remove()


def _record(trace: Trace, name: str):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        trace[name] = output.detach().float().numpy().copy()

    return hook


def _record_input(trace: Trace, name: str, transpose: bool = False):
    """A pre-hook: the input of a module is the output of the (functional) step before it."""

    def hook(_module: nn.Module, inputs: tuple) -> None:
        value = inputs[0].transpose(1, 2) if transpose else inputs[0]
        trace[name] = value.detach().float().numpy().copy()

    return hook


@torch.no_grad()
def trace_encoder(encoder: AudioEncoder, mel: np.ndarray) -> Trace:
    """Run ``encoder`` on mel (batch, n_mels, frames) and return ``{"mel", stage: activation}``.

    ``conv1`` is GELU(conv1(mel)), read as conv2's input and transposed to (batch, frames,
    state); ``conv2`` is the input of block 0 (GELU(conv2), transposed, plus the positional
    embedding); then each block's output and ``ln_post``'s.
    """
    trace: Trace = {MEL: np.ascontiguousarray(mel, dtype=np.float32)}
    stages = encoder_stages(len(encoder.blocks))
    with _hooks([_encoder_hook(encoder, stage, trace) for stage in stages]):
        encoder(torch.from_numpy(trace[MEL]))
    return trace


def _encoder_hook(encoder: AudioEncoder, stage: Stage, trace: Trace) -> RemovableHandle:
    if stage.kind == "conv1":  # the conv's GELU is functional: read it as conv2's input
        return encoder.conv2.register_forward_pre_hook(_record_input(trace, stage.name, True))
    if stage.kind == "conv2":  # so is the positional embedding: read block 0's input
        return encoder.blocks[0].register_forward_pre_hook(_record_input(trace, stage.name))
    module = encoder.ln_post if stage.kind == "ln_post" else encoder.blocks[stage.block]
    return module.register_forward_hook(_record(trace, stage.name))


@torch.no_grad()
def trace_decoder(decoder: TextDecoder, tokens: np.ndarray, audio_features: np.ndarray) -> Trace:
    """Run ``decoder`` on the whole token sequence (no cache) and capture its stages.

    ``decoder.embed`` is token plus positional embedding (the input of block 0), then
    ``decoder.blocks.i``, ``decoder.ln`` and ``logits`` (batch, tokens, vocab).
    """
    trace: Trace = {TOKENS: np.ascontiguousarray(tokens, dtype=np.int64)}
    *stages, logits_stage = decoder_stages(len(decoder.blocks))
    with _hooks([_decoder_hook(decoder, stage, trace) for stage in stages]):
        logits = decoder(torch.from_numpy(tokens).long(), torch.from_numpy(audio_features))
    trace[logits_stage.name] = logits.float().numpy()
    return trace


def _decoder_hook(decoder: TextDecoder, stage: Stage, trace: Trace) -> RemovableHandle:
    if stage.kind == "embed":  # token plus positional embedding: read block 0's input
        return decoder.blocks[0].register_forward_pre_hook(_record_input(trace, stage.name))
    module = decoder.ln if stage.kind == "ln" else decoder.blocks[stage.block]
    return module.register_forward_hook(_record(trace, stage.name))


ENCODER_SUB_STAGES = ("attn_ln", "attn", "mlp_ln", "mlp")
DECODER_SUB_STAGES = ("attn_ln", "attn", "cross_attn_ln", "cross_attn", "mlp_ln", "mlp")
Capture = dict[str, tuple[np.ndarray, np.ndarray]]  # sub-stage: (its input, its output)


@torch.no_grad()
def trace_block(
    block: ResidualAttentionBlock,
    x: np.ndarray,
    xa: np.ndarray | None = None,
    mask: torch.Tensor | None = None,
) -> Capture:
    """Run openai-whisper's ``block`` on ``x`` and record each sub-module's input and output,
    in execution order (the bisection inside a divergent block reads them)."""
    capture: Capture = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple, output) -> None:
            out = output[0] if isinstance(output, tuple) else output  # attention returns (out, qk)
            capture[name] = (inputs[0].float().numpy().copy(), out.float().numpy().copy())

        return hook

    names = DECODER_SUB_STAGES if block.cross_attn is not None else ENCODER_SUB_STAGES
    handles = [getattr(block, name).register_forward_hook(record(name)) for name in names]
    with _hooks(handles):
        audio = None if xa is None else torch.from_numpy(xa)
        block(torch.from_numpy(x), audio, mask=mask)
    return capture
