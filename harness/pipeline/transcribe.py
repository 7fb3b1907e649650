"""Greedy transcription through openai-whisper's own ``transcribe``, whatever runs the model.

A model standing in for ``whisper.Whisper`` may bring what it needs around transcription: MAX's
(``MaxWhisper.transcribing``) loads its graphs and computes the log-mel in MAX. A model without
one is openai-whisper's and needs nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import whisper


@dataclass(frozen=True)
class Transcript:
    text: str
    tokens: list[int]
    language: str
    segments: list[dict[str, Any]] = field(repr=False)


def transcribe(model: Any, audio: np.ndarray, language: str | None = "en") -> Transcript:
    """Greedy (temperature 0) transcription with openai-whisper's windowing for long audio."""
    options = dict(temperature=0.0, fp16=False, language=language, verbose=None)
    with transcribing(model):
        result = whisper.transcribe(model, audio, **options)
    tokens = [t for segment in result["segments"] for t in segment["tokens"]]
    return Transcript(result["text"], tokens, result["language"], result["segments"])


def transcribing(model: Any) -> contextlib.AbstractContextManager:
    """The model's own context for transcription, if it has one."""
    own = getattr(model, "transcribing", None)
    return own() if own else contextlib.nullcontext()


def log_mel(model: Any, audio: np.ndarray) -> torch.Tensor:
    """(n_mels, frames) of ``audio``: the model's own log-mel if it has one (MAX's), else
    openai-whisper's."""
    own = getattr(model, "log_mel_spectrogram", None)
    return own(audio) if own else whisper.log_mel_spectrogram(audio, model.dims.n_mels)
