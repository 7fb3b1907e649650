"""Every engine's drift beside MAX's: MAX's other weights modes and CTranslate2 float32 and int8.

A user choosing int8 or a quantised MAX mode should see what it costs. Each engine is compared
with PyTorch where it exposes the values, on the same inputs as MAX float32: the encoder output
of the report's window, the teacher-forced logits of its true text, and the transcripts of the
report's clips token by token and in WER. MAX float32's own figures are restated over the same
positions so the rows compare like with like: CTranslate2 returns logits only from the last
prompt position on, not of the prompt itself. A MAX weights mode changes only the decoding step
(``quantized.py``), so it has no encoder row of its own; its logits are the cached step's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.compare.decoder_parity import (
    incremental_logits,
    prompt_length,
    step_metrics,
    step_summary,
)
from harness.compare.metrics import compare
from harness.compare.transcripts import (
    corpus_wer,
    first_difference,
    transcription_language,
    true_text,
)
from harness.compare.wer import word_error_rate
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.whisper import MaxWhisper
from harness.peers.ctranslate2 import CTranslate2Whisper, describe, versions
from harness.pipeline.transcribe import transcribe
from harness.progress import Notify


def peer_parity(
    checkpoint: Checkpoint,
    modes: list[MaxWhisper],
    peers: list[CTranslate2Whisper],
    mel: np.ndarray,
    features: np.ndarray,
    tokens: np.ndarray,
    document: dict[str, Any],
    clips: list[tuple[Path, np.ndarray]],
    progress: Notify,
) -> dict[str, Any]:
    """The ``peers`` section of parity.json. ``modes`` are MAX with other weights modes,
    ``peers`` CTranslate2 at its compute types; ``mel`` (1, n_mels, 3000) is the report's window,
    ``features`` PyTorch's encoder output for it, ``tokens`` the teacher-forced sequence, and
    ``document`` the report so far (MAX float32's decoder steps and transcripts)."""
    start = prompt_length(checkpoint)
    with torch.no_grad():
        reference = checkpoint.model.logits(torch.from_numpy(tokens), torch.from_numpy(features))
    reference_logits = reference.numpy()[:, start - 1 :]
    max_steps = document["decoder"]["teacher_forced"]["per_step"][start - 1 :]
    section: dict[str, Any] = {
        "labels": {"max": f"MAX {document['dtype']}"},
        "ctranslate2": {peer.name: describe(peer) for peer in peers},
        "versions": versions(),
        "teacher_forced_from_step": start - 1,
        "max": {
            "encoder": document["encoder"]["fused"],
            "teacher_forced": step_summary(max_steps),
            **_tokens_equal(document["transcripts"]),
            "wer": {name: pooled["max"] for name, pooled in document["wer"].items()},
        },
    }
    for mode in modes:
        progress(f"peers: {mode.label}, teacher forcing")
        logits = incremental_logits(mode.text_decoder, tokens, features, start)
        section["labels"][mode.name] = mode.label
        section[mode.name] = {
            "weights": mode.weights,
            "teacher_forced": step_summary(step_metrics(logits[:, start - 1 :], reference_logits)),
            **_transcribed(checkpoint, mode, document["transcripts"], clips, progress),
        }
    for peer in peers:
        progress(f"peers: {peer.label}, encoder and teacher forcing")
        logits = peer.next_token_logits(tokens, features, start)
        section["labels"][peer.name] = peer.label
        section[peer.name] = {
            "encoder": compare(peer.encode(mel), features),
            "teacher_forced": step_summary(step_metrics(logits, reference_logits)),
            **_transcribed(checkpoint, peer, document["transcripts"], clips, progress),
        }
    return section


def _transcribed(
    checkpoint: Checkpoint,
    engine: MaxWhisper | CTranslate2Whisper,
    entries: list[dict[str, Any]],
    clips: list[tuple[Path, np.ndarray]],
    progress: Notify,
) -> dict[str, Any]:
    """``transcripts``: per clip, the engine's transcript (under its name) against PyTorch's,
    from ``entries``; how many are token-equal; ``wer``: pooled per clip set."""
    language = transcription_language(checkpoint)
    name, results = engine.name, []
    for (path, audio), entry in zip(clips, entries, strict=True):
        progress(f"peers: {engine.label}, transcribing {path.name}")
        result = (
            engine.transcribe(audio, language)
            if isinstance(engine, CTranslate2Whisper)
            else transcribe(engine, audio, language)
        )
        truth = true_text(path)
        results.append(
            {
                "audio": path.name,
                "clip_set": entry["clip_set"],
                "reference_text": truth,
                name: {"text": result.text, "tokens": result.tokens},
                "tokens_equal": result.tokens == entry["torch"]["tokens"],
                "first_divergent_token": first_difference(entry["torch"]["tokens"], result.tokens),
                "wer_vs_reference": None if truth is None else word_error_rate(result.text, truth),
            }
        )
    return {
        "transcripts": results,
        **_tokens_equal(results),
        "wer": {set_: pooled[name] for set_, pooled in corpus_wer(results, (name,)).items()},
    }


def _tokens_equal(transcripts: list[dict[str, Any]]) -> dict[str, Any]:
    equal = sum(bool(t["tokens_equal"]) for t in transcripts)
    return {
        "clips": len(transcripts),
        "tokens_equal": equal,
        "tokens_equal_fraction": equal / len(transcripts) if transcripts else 1.0,
    }
