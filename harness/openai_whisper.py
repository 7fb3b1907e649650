"""What the harness reads of openai-whisper without importing it: its constants, its mel filter
bank, and the shape of its ``ModelDimensions``.

Importing ``whisper`` imports PyTorch (~1 s here) and numba. The MAX model needs neither, and a
transcription on MAX spends that second encoding its first window instead (``harness.cli``),
so the MAX path reads these from openai-whisper's files; ``test_openai_whisper.py`` holds each
equal to what openai-whisper itself gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

# whisper/audio.py
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window


@dataclass
class ModelDimensions:
    """``whisper.model.ModelDimensions``, field for field: a checkpoint's ``dims``."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


def is_multilingual(dims: ModelDimensions) -> bool:
    """``whisper.Whisper.is_multilingual``'s rule: the multilingual vocabulary is larger."""
    return dims.n_vocab >= 51865


def package_dir() -> Path:
    """openai-whisper's installed package folder, found without running its ``__init__``."""
    spec = find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("openai-whisper is not installed")
    return Path(spec.submodule_search_locations[0])


@cache
def mel_filters(n_mels: int) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) float32: ``whisper.audio.mel_filters``, read from the same file."""
    with np.load(package_dir() / "assets" / "mel_filters.npz", allow_pickle=False) as f:
        return f[f"mel_{n_mels}"]
