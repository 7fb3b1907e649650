"""Long audio as one batch: its 30 s chunks encoded together and decoded together.

openai-whisper's ``transcribe`` walks long audio one 30 s window at a time, each window prompted
with the text before it, so a window's decoding cannot start before the previous one ends. A
decoding step is memory-bound (tiny.en's reads ~130 MB of weights and cache for one token), so
decoding every window's next token in one step costs little more than decoding one. That is
faster-whisper's ``BatchedInferencePipeline``: chunks of at most 30 s cut where speech pauses,
no previous text, no timestamps, greedy. ``transcribe_batched`` runs that algorithm through
openai-whisper's own ``decode`` for PyTorch and MAX alike, so parity still compares like with
like, and ``chunk_bounds`` gives the chunks faster-whisper is handed too (``clip_timestamps``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.decoding import DecodingOptions

from harness.pipeline.transcribe import Transcript, log_mel, transcribing

CHUNK_S = 30  # what one encoder window holds
SEARCH_S = 5  # a cut falls in the last SEARCH_S seconds before a chunk would pass CHUNK_S
FRAME_S = 0.1  # the cut is the middle of the quietest FRAME_S there
BATCH_SIZE = 8  # faster-whisper's default


def chunk_bounds(audio: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) sample bounds of chunks of at most 30 s covering ``audio``, each cut at the
    quietest 0.1 s of its last 5 s: a pause between words, in speech. faster-whisper finds the
    pauses with its Silero VAD model; signal energy needs no model and no extra dependency."""
    limit, search, frame = (int(s * SAMPLE_RATE) for s in (CHUNK_S, SEARCH_S, FRAME_S))
    bounds, start = [], 0
    while len(audio) - start > limit:
        window = audio[start + limit - search : start + limit].reshape(-1, frame)
        quietest = int(np.argmin(np.square(window).mean(axis=1)))
        cut = start + limit - search + quietest * frame + frame // 2
        bounds.append((start, cut))
        start = cut
    return [*bounds, (start, len(audio))]


def transcribe_batched(
    model: Any,
    audio: np.ndarray,
    language: str | None = "en",
    batch_size: int = BATCH_SIZE,
) -> Transcript:
    """Greedy (temperature 0), without timestamps, ``batch_size`` chunks per ``decode`` call;
    one segment per chunk, its ``seek`` the chunk's first mel frame. ``language`` None: English
    for an English-only model (as ``transcribe`` does), else detected chunk by chunk."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: at least 1")
    if language is None and not model.is_multilingual:
        language = "en"
    options = DecodingOptions(
        language=language, without_timestamps=True, temperature=0.0, fp16=False
    )
    bounds = chunk_bounds(audio)
    results = []
    with torch.no_grad(), transcribing(model):
        for first in range(0, len(bounds), batch_size):
            group = bounds[first : first + batch_size]
            mel = torch.stack([_log_mel(model, audio[start:end]) for start, end in group])
            results += model.decode(mel.to(model.device), options)
    segments = [
        {
            "seek": start // HOP_LENGTH,
            "start": start / SAMPLE_RATE,
            "end": end / SAMPLE_RATE,
            "text": result.text,
            "tokens": result.tokens,
        }
        for (start, end), result in zip(bounds, results, strict=True)
    ]
    text = " ".join(result.text for result in results if result.text)
    tokens = [t for result in results for t in result.tokens]
    return Transcript(text, tokens, results[0].language, segments)


def _log_mel(model: Any, chunk: np.ndarray) -> torch.Tensor:
    """(n_mels, 3000): the chunk padded to 30 s, in MAX for MAX, in PyTorch for PyTorch."""
    return log_mel(model, whisper.pad_or_trim(chunk.astype(np.float32)))
