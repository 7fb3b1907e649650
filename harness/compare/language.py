"""Language identification compared: MAX and PyTorch on the same clip, probabilities included.

A multilingual Whisper picks the language from the first decoder step's logits over the
language tokens (``whisper.decoding.detect_language``); MAX runs that same function with its own
log-mel, encoder and decoder behind it. The detected language must be the same, and the two
probability vectors over every language are compared by KL and largest difference, next to
PyTorch's margin between its top two languages (a near-tie may flip without any bug).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from whisper.decoding import detect_language

from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.whisper import MaxWhisper
from harness.progress import Notify, silent


def compare_languages(
    checkpoint: Checkpoint,
    candidate: MaxWhisper,
    clips: list[tuple[Path, np.ndarray]],
    progress: Notify = silent,
) -> list[dict[str, Any]] | None:
    """One ``language`` entry of parity.json per clip; ``None`` for an English-only model."""
    if not checkpoint.is_multilingual:
        return None
    entries = []
    for path, audio in clips:
        progress(f"language identification on {path.name}")
        window = whisper.pad_or_trim(audio)
        mel = whisper.log_mel_spectrogram(window, checkpoint.dims.n_mels)
        reference = _probabilities(checkpoint.model, mel)
        result = _probabilities(candidate, torch.from_numpy(candidate.log_mel(window)))
        entries.append({"audio": path.name, **language_metrics(reference, result)})
    return entries


def _probabilities(model: whisper.Whisper | MaxWhisper, mel: torch.Tensor) -> dict[str, float]:
    """Every language's probability for the 30 s window ``mel`` (n_mels, frames)."""
    with torch.no_grad():
        _, probabilities = detect_language(model, mel[None])
    return probabilities[0]


def language_metrics(reference: dict[str, float], result: dict[str, float]) -> dict[str, Any]:
    """Both sides' top language, whether they agree, KL(torch || max), the largest probability
    difference and the reference's top-2 margin."""
    languages = sorted(reference)
    p, q = (_normalised([side[k] for k in languages]) for side in (reference, result))
    top = np.sort(p)[-2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return {
        "torch": {"language": languages[p.argmax()], "probability": float(p.max())},
        "max": {"language": languages[q.argmax()], "probability": float(q.max())},
        "same_language": bool(p.argmax() == q.argmax()),
        "kl": float(max(0.0, terms.sum())),
        "max_abs_probability": float(np.abs(p - q).max()),
        "top2_margin": float(top[1] - top[0]),
    }


def _normalised(probabilities: list[float]) -> np.ndarray:
    """float64, summing to 1: float32 softmax outputs miss 1 by ~1e-7, which would otherwise
    enter the KL as a first-order term and hide its second-order size."""
    vector = np.array(probabilities, dtype=np.float64)
    return vector / vector.sum()
