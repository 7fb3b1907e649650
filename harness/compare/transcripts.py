"""Transcripts compared: the same audio through PyTorch and through MAX, token by token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.compare.wer import edit_distance, word_error_rate, words
from harness.inputs.audio import audio_duration_s, load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.whisper import MaxWhisper
from harness.paths import FIXTURES
from harness.pipeline.transcribe import Transcript, transcribe
from harness.progress import Notify, silent

FIXTURE_AUDIO = FIXTURES / "audio"
FIXTURE_MODELS_DIR = FIXTURE_AUDIO.parent / "models"
SPEECH = FIXTURE_AUDIO.parent / "speech"  # real human speech (fixtures/make_speech.py)
FIXTURE_CLIPS = ["short.wav", "sentences.wav", "long.wav", "silence.wav"]


def fixture_clips() -> list[Path]:
    return [FIXTURE_AUDIO / name for name in FIXTURE_CLIPS]


def speech_clips() -> list[Path]:
    return sorted(SPEECH.glob("*.wav"))


def report_clips(checkpoint: Checkpoint) -> list[Path]:
    """The espeak-ng fixture clips, plus what the weights can be judged on: real human speech
    for pretrained Whisper; for a trained fixture model, its own held-out test clips
    (``fixtures/models/<name>_heldout/``: sentences it never trained on, in its vocabulary).
    Random weights get the fixture clips only: their text means nothing."""
    if checkpoint.weights == "pretrained":
        return speech_clips() + fixture_clips()
    if checkpoint.weights == "fixture":
        name = checkpoint.name.partition(":")[2]
        return fixture_clips() + sorted((FIXTURE_MODELS_DIR / f"{name}_heldout").glob("*.wav"))
    return fixture_clips()


def transcription_language(checkpoint: Checkpoint) -> str | None:
    """``None`` (detect it, as a user's run does) for pretrained multilingual Whisper; English
    otherwise: an English-only model has no choice, and random weights detect noise."""
    multilingual = checkpoint.is_multilingual
    return None if multilingual and checkpoint.weights == "pretrained" else "en"


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
    progress: Notify = silent,
) -> list[dict[str, Any]]:
    """One ``transcripts`` entry of parity.json per clip."""
    language = transcription_language(checkpoint)
    entries = []
    for path, audio in clips:
        progress(f"transcribing {path.name} with PyTorch")
        reference = transcribe(checkpoint.model, audio, language)
        progress(f"transcribing {path.name} with MAX")
        result = transcribe(candidate, audio, language)
        entries.append(entry(path, audio_duration_s(audio), reference, result))
    return entries


def entry(path: Path, duration: float, torch: Transcript, max_: Transcript) -> dict[str, Any]:
    truth = true_text(path)
    return {
        "audio": path.name,
        "clip_set": path.parent.name,  # speech (human), audio (espeak-ng), <model>_heldout
        "duration_s": duration,
        "reference_text": truth,
        "torch": {"text": torch.text, "tokens": torch.tokens, "language": torch.language},
        "max": {"text": max_.text, "tokens": max_.tokens, "language": max_.language},
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


def corpus_wer(
    entries: list[dict[str, Any]], backends: tuple[str, ...] = ("torch", "max")
) -> dict[str, dict[str, Any]]:
    """Per clip set, word error rate against the true text over its clips that have one: all
    their word errors over all their words (a per-clip mean would let a two-word clip weigh
    like a page). ``entries[i][backend]["text"]`` is each backend's transcript."""
    sets: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e["reference_text"]:
            sets.setdefault(e["clip_set"], []).append(e)
    return {name: _pooled_wer(scored, backends) for name, scored in sets.items()}


def _pooled_wer(scored: list[dict[str, Any]], backends: tuple[str, ...]) -> dict[str, Any]:
    truth = [words(e["reference_text"]) for e in scored]
    total = sum(len(t) for t in truth)
    summary: dict[str, Any] = {"clips": len(scored), "words": total}
    for backend in backends:
        errors = [
            edit_distance(words(e[backend]["text"]), t) for e, t in zip(scored, truth, strict=True)
        ]
        summary[backend] = sum(errors) / total
    return summary
