"""Transcripts compared: the same audio through PyTorch and through MAX, token by token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.audio import audio_duration_s, load_audio
from harness.checkpoints import Checkpoint
from harness.parity import Progress
from harness.transcribe import MaxWhisper, Transcript, transcribe
from harness.wer import word_error_rate

FIXTURE_AUDIO = Path(__file__).resolve().parent.parent / "fixtures" / "audio"
FIXTURE_MODELS_DIR = FIXTURE_AUDIO.parent / "models"
FIXTURE_CLIPS = ["short.wav", "sentences.wav", "long.wav", "silence.wav"]


def fixture_clips() -> list[Path]:
    return [FIXTURE_AUDIO / name for name in FIXTURE_CLIPS]


def report_clips(checkpoint: Checkpoint) -> list[Path]:
    """The fixture clips, plus, for a trained fixture model, its own held-out test clips
    (``fixtures/models/<name>_heldout/``: sentences it never trained on, in its vocabulary), on
    which its word error rate against the true text means something."""
    if checkpoint.weights != "fixture":
        return fixture_clips()
    name = checkpoint.name.partition(":")[2]
    return fixture_clips() + sorted((FIXTURE_MODELS_DIR / f"{name}_heldout").glob("*.wav"))


def true_text(path: Path) -> str | None:
    """The spoken text of a clip, from the transcripts.json beside it, if it has one (an entry
    is the text, or a record with the text under ``"text"``)."""
    index = path.parent / "transcripts.json"
    if not index.is_file():
        return None
    entry = json.loads(index.read_text()).get(path.name)
    return entry["text"] if isinstance(entry, dict) else entry


def load_clips(paths: list[Path]) -> list[tuple[Path, np.ndarray]]:
    """Every clip read up front, so a bad file stops the run before any work is done."""
    return [(path, load_audio(path)) for path in paths]


def compare_transcripts(
    checkpoint: Checkpoint,
    candidate: MaxWhisper,
    clips: list[tuple[Path, np.ndarray]],
    progress: Progress = lambda _msg: None,
) -> list[dict[str, Any]]:
    """One ``transcripts`` entry of parity.json per clip."""
    entries = []
    for path, audio in clips:
        progress(f"transcribing {path.name} with PyTorch")
        reference = transcribe(checkpoint.model, audio)
        progress(f"transcribing {path.name} with MAX")
        result = transcribe(candidate, audio)
        entries.append(entry(path, audio_duration_s(audio), reference, result))
    return entries


def entry(path: Path, duration: float, torch: Transcript, max_: Transcript) -> dict[str, Any]:
    truth = true_text(path)
    return {
        "audio": path.name,
        "duration_s": duration,
        "reference_text": truth,
        "torch": {"text": torch.text, "tokens": torch.tokens},
        "max": {"text": max_.text, "tokens": max_.tokens},
        "tokens_equal": torch.tokens == max_.tokens,
        "first_divergent_token": first_difference(torch.tokens, max_.tokens),
        "wer_max_vs_torch": word_error_rate(max_.text, torch.text),
        "wer_vs_reference": {
            "torch": None if truth is None else word_error_rate(torch.text, truth),
            "max": None if truth is None else word_error_rate(max_.text, truth),
        },
    }


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where the sequences differ (or where one ends), else None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
