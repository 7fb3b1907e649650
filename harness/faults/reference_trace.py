"""PyTorch's side of every planted fault's stage checks, traced once and shared by all faults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import whisper

from harness.compare.decoder_parity import teacher_tokens
from harness.compare.transcripts import true_text
from harness.faults.catalogue import CLIP
from harness.inputs.audio import load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.reference import tracer
from harness.reference.tracer import Trace


@dataclass(frozen=True)
class ReferenceTrace:
    """openai-whisper's activations on the clip: each stage check's inputs and expected output."""

    audio: np.ndarray  # the clip padded to the 30 s window
    mel: np.ndarray  # whisper's log-mel of it, (n_mels, frames)
    encoder: Trace
    decoder: Trace


def trace_reference(checkpoint: Checkpoint, clip: Path = CLIP) -> ReferenceTrace:
    """Trace openai-whisper on ``clip``: its log-mel, encoder, and decoder on the true sentence
    (its ``transcripts.json`` entry; none: the prompt alone, as the report does)."""
    audio = whisper.pad_or_trim(load_audio(clip))
    mel = whisper.log_mel_spectrogram(audio, checkpoint.dims.n_mels).numpy()
    encoder = tracer.trace_encoder(checkpoint.model.encoder, mel[None])
    tokens = teacher_tokens(checkpoint, true_text(clip) or "")
    decoder = tracer.trace_decoder(checkpoint.model.decoder, tokens, encoder["ln_post"])
    return ReferenceTrace(audio, mel, encoder, decoder)
