"""Each engine as the speed timer sees it: encode, decode so many tokens, transcribe a clip.

Kept apart from ``measure`` (the plan and the timing loop) because each engine needs its own
glue to present the same three calls on the same inputs: ``TorchWhisper`` runs openai-whisper on
the candidate's device and in its dtype, MAX and PyTorch share openai-whisper's ``Inference``
loop for decoding (``decode_seconds``), and CTranslate2 times its own ``generate``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from whisper.decoding import Inference, PyTorchInference

from harness.compare.decoder_parity import tokenizer
from harness.inputs.audio import load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.inference import MaxInference
from harness.max_whisper.whisper import MaxWhisper
from harness.peers.ctranslate2 import CTranslate2Whisper
from harness.pipeline.batched import chunk_bounds, transcribe_batched
from harness.pipeline.transcribe import Transcript, transcribe


@dataclass(frozen=True)
class Backend:
    """One engine as the timer sees it: the four measures, each a call on shared inputs that
    returns the seconds it took (timed where the engine runs: a MAX mode in its own process)."""

    name: str  # its key in parity.json: torch, max, ct2-float32, ct2-int8
    label: str
    encode_seconds: Callable[[torch.Tensor], float]  # (1, n_mels, 3000) mel
    decode_seconds: Callable[[torch.Tensor, torch.Tensor, int], float]  # prompt, features, n
    transcribe: Callable[[Path], tuple[float, Transcript]]
    transcribe_batched: Callable[[np.ndarray], tuple[float, Transcript]]  # long audio


def timed(function: Callable[..., Any]) -> Callable[..., tuple[float, Any]]:
    """``function`` returning the seconds it took, and its value."""

    def call(*args: Any) -> tuple[float, Any]:
        start = time.perf_counter()
        value = function(*args)
        return time.perf_counter() - start, value

    return call


def seconds_of(function: Callable[..., Any]) -> Callable[..., float]:
    call = timed(function)
    return lambda *args: call(*args)[0]


def torch_backend(reference: TorchWhisper) -> Backend:
    return Backend(
        "torch",
        f"PyTorch {reference.dtype}",
        seconds_of(reference.encode),
        reference.decode_seconds,
        timed(reference.transcribe),
        timed(reference.transcribe_batched),
    )


def max_backend(candidate: MaxWhisper) -> Backend:
    """MAX in this process; the timer runs it in a process of its own (``engine_process``)."""

    def max_decode_seconds(prompt: torch.Tensor, features: torch.Tensor, tokens: int) -> float:
        return decode_seconds(MaxInference(candidate.text_decoder), prompt, features, tokens)

    return Backend(
        candidate.name,
        candidate.label,
        seconds_of(candidate.encoder),
        max_decode_seconds,
        timed(lambda clip: transcribe(candidate, load_audio(clip))),
        timed(lambda audio: transcribe_batched(candidate, audio)),
    )


def ctranslate2_backend(peer: CTranslate2Whisper) -> Backend:
    def peer_decode_seconds(prompt: torch.Tensor, features: torch.Tensor, tokens: int) -> float:
        return peer.decode_seconds(prompt[0].tolist(), features.numpy(), tokens)

    return Backend(
        peer.name,
        peer.label,
        seconds_of(lambda mel: peer.encode(mel.numpy())),
        peer_decode_seconds,
        timed(lambda clip: peer.transcribe(load_audio(clip))),
        timed(lambda audio: peer.transcribe_batched(audio, chunk_bounds(audio))),
    )


class TorchWhisper:
    """The PyTorch side, on the candidate's device, in the candidate's dtype (autocast)."""

    def __init__(self, model: whisper.Whisper, device: str, dtype: str) -> None:
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        self.model = model.to(self.device).eval()
        self.dtype = dtype

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """No grad, autocast for bfloat16, and the device synchronised before the clock stops."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.no_grad(), autocast:
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        with self.running():
            return self.model.encoder(mel.to(self.device)).float().cpu()

    def decode_seconds(self, prompt: torch.Tensor, features: torch.Tensor, tokens: int) -> float:
        inference = PyTorchInference(self.model, prompt.shape[1])
        with self.running():
            return decode_seconds(
                inference, prompt.to(self.device), features.to(self.device), tokens
            )

    def transcribe(self, clip: Path) -> Transcript:
        with self.running():
            return transcribe(self.model, load_audio(clip))

    def transcribe_batched(self, audio: np.ndarray) -> Transcript:
        with self.running():
            return transcribe_batched(self.model, audio)


def transcription_prompt(checkpoint: Checkpoint) -> torch.Tensor:
    """(1, n): the standard English transcription prompt, without timestamps."""
    return torch.tensor([tokenizer(checkpoint).sot_sequence_including_notimestamps])


def decode_seconds(
    inference: Inference, prompt: torch.Tensor, features: torch.Tensor, tokens: int
) -> float:
    """Seconds per token of greedy decoding, the prompt's own forward pass not timed."""
    sequence = prompt
    logits = inference.logits(sequence, features)
    start = time.perf_counter()
    for _ in range(tokens):
        best = logits[:, -1].argmax(dim=-1, keepdim=True).to(sequence.device)
        sequence = torch.cat([sequence, best], dim=-1)
        logits = inference.logits(sequence, features)
    logits[:, -1].argmax().item()  # wait for the device
    seconds = (time.perf_counter() - start) / tokens
    inference.cleanup_caching()
    return seconds
