"""Make openai-whisper's own ``transcribe()`` compute its log-mel spectrogram with MAX.

``whisper/transcribe.py`` does ``from .audio import log_mel_spectrogram``, so ``transcribe()``
looks the name up in the globals of the ``whisper.transcribe`` module: replacing
``whisper.audio.log_mel_spectrogram`` would not reach it, while replacing the name in that module
reaches ``transcribe()`` and nothing else (the decoder, the parity reference and
``whisper.log_mel_spectrogram`` stay PyTorch). The replacement is process-wide while the context
is open, so it is not for concurrent threads, and the original is restored even on error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from harness.errors import HarnessError
from harness.inputs.audio import load_audio

# ``whisper.transcribe`` the attribute is the function (``whisper/__init__.py`` re-exports it),
# so the module is fetched by its import path.
TRANSCRIBE_MODULE = importlib.import_module("whisper.transcribe")


# The log-mel of a waveform with that many samples of padding past its end: MAX's (``MaxLogMel``)
MelOf = Callable[[np.ndarray, int], np.ndarray]


@contextmanager
def max_log_mel(n_mels: int, mel: MelOf) -> Iterator[None]:
    """Within the context, ``whisper.transcribe(...)`` gets its ``n_mels``-band log-mel from
    ``mel(audio, padding)``."""
    original = TRANSCRIBE_MODULE.log_mel_spectrogram
    TRANSCRIBE_MODULE.log_mel_spectrogram = _log_mel_spectrogram(n_mels, mel)
    try:
        yield
    finally:
        TRANSCRIBE_MODULE.log_mel_spectrogram = original


def _log_mel_spectrogram(n_bands: int, mel: MelOf) -> Callable[..., torch.Tensor]:
    """A stand-in with ``whisper.audio.log_mel_spectrogram``'s signature and return type."""

    def log_mel_spectrogram(
        audio: str | np.ndarray | torch.Tensor,
        n_mels: int = 80,
        padding: int = 0,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        if n_mels != n_bands:
            raise HarnessError(f"the model expects {n_mels} mel bands, MAX mel has {n_bands}")
        if isinstance(audio, str):
            audio = load_audio(audio)
        elif isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        as_torch = torch.from_numpy(mel(audio, padding))
        return as_torch if device is None else as_torch.to(device)

    return log_mel_spectrogram
