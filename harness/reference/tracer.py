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
from torch import nn
from whisper.model import AudioEncoder, TextDecoder

Trace = dict[str, np.ndarray]


@contextmanager
def _hooks(registrations: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in registrations:
            handle.remove()


def _record(trace: Trace, name: str, transpose: bool = False):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        value = output.transpose(1, 2) if transpose else output
        trace[name] = value.detach().float().numpy().copy()

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
    trace: Trace = {"mel": np.ascontiguousarray(mel, dtype=np.float32)}
    handles = [
        encoder.conv2.register_forward_pre_hook(_record_input(trace, "conv1", transpose=True)),
        encoder.blocks[0].register_forward_pre_hook(_record_input(trace, "conv2")),
        encoder.ln_post.register_forward_hook(_record(trace, "ln_post")),
    ]
    handles += [
        block.register_forward_hook(_record(trace, f"blocks.{i}"))
        for i, block in enumerate(encoder.blocks)
    ]
    with _hooks(handles):
        encoder(torch.from_numpy(trace["mel"]))
    return trace


@torch.no_grad()
def trace_decoder(decoder: TextDecoder, tokens: np.ndarray, audio_features: np.ndarray) -> Trace:
    """Run ``decoder`` on the whole token sequence (no cache) and capture its stages.

    ``decoder.embed`` is token plus positional embedding (the input of block 0), then
    ``decoder.blocks.i``, ``decoder.ln`` and ``logits`` (batch, tokens, vocab).
    """
    trace: Trace = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}
    handles = [
        decoder.blocks[0].register_forward_pre_hook(_record_input(trace, "decoder.embed")),
        decoder.ln.register_forward_hook(_record(trace, "decoder.ln")),
    ]
    handles += [
        block.register_forward_hook(_record(trace, f"decoder.blocks.{i}"))
        for i, block in enumerate(decoder.blocks)
    ]
    with _hooks(handles):
        logits = decoder(torch.from_numpy(tokens).long(), torch.from_numpy(audio_features))
    trace["logits"] = logits.float().numpy()
    return trace
