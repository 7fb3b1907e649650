"""The peers' fidelity beside MAX's: CTranslate2 float32 and int8 through the same comparisons.

A user choosing int8 should see what it costs. Each peer is compared with PyTorch where it
exposes the values, on the same inputs as MAX: the encoder output of the report's window, the
teacher-forced logits of its true text, and the transcripts of the report's clips token by token
and in WER. MAX's own figures are restated over the same positions so the rows compare like with
like: CTranslate2 returns logits only from the last prompt position on, not of the prompt itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.checkpoints import Checkpoint
from harness.ctranslate2_peer import CTranslate2Whisper, describe, versions
from harness.decoder_parity import prompt_length, step_metrics
from harness.metrics import compare
from harness.parity import Progress
from harness.transcripts import corpus_wer, first_difference, transcription_language, true_text
from harness.wer import word_error_rate


def peer_parity(
    checkpoint: Checkpoint,
    peers: list[CTranslate2Whisper],
    mel: np.ndarray,
    features: np.ndarray,
    tokens: np.ndarray,
    document: dict[str, Any],
    clips: list[tuple[Path, np.ndarray]],
    progress: Progress,
) -> dict[str, Any]:
    """The ``peers`` section of parity.json. ``mel`` (1, n_mels, 3000) is the report's window,
    ``features`` PyTorch's encoder output for it, ``tokens`` the teacher-forced sequence, and
    ``document`` the report so far (its MAX decoder steps and transcripts)."""
    start = prompt_length(checkpoint)
    with torch.no_grad():
        reference = checkpoint.model.logits(torch.from_numpy(tokens), torch.from_numpy(features))
    reference_logits = reference.numpy()[:, start - 1 :]
    max_steps = document["decoder"]["teacher_forced"]["per_step"][start - 1 :]
    section: dict[str, Any] = {
        "engines": {peer.name: describe(peer) for peer in peers},
        "versions": versions(),
        "teacher_forced_from_step": start - 1,
        "max": {"teacher_forced": _summary(max_steps)},
    }
    for peer in peers:
        progress(f"peers: {peer.label}, encoder and teacher forcing")
        logits = peer.next_token_logits(tokens, features, start)
        section[peer.name] = {
            "encoder": compare(peer.encode(mel), features),
            "teacher_forced": _summary(step_metrics(logits, reference_logits)),
            "transcripts": _transcripts(checkpoint, peer, document["transcripts"], clips, progress),
        }
        section[peer.name]["wer"] = corpus_wer(section[peer.name]["transcripts"], (peer.name,))
    return section


def _summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "steps": len(steps),
        "top1_agreement": float(np.mean([s["top1_match"] for s in steps])),
        "max_kl": max(s["kl"] for s in steps),
        "max_abs_logit": max(s["max_abs"] for s in steps),
    }


def _transcripts(
    checkpoint: Checkpoint,
    peer: CTranslate2Whisper,
    entries: list[dict[str, Any]],
    clips: list[tuple[Path, np.ndarray]],
    progress: Progress,
) -> list[dict[str, Any]]:
    """Per clip: the peer's transcript (under its name) against PyTorch's, from ``entries``."""
    language = transcription_language(checkpoint)
    results = []
    for (path, audio), entry in zip(clips, entries, strict=True):
        progress(f"peers: {peer.label}, transcribing {path.name}")
        result = peer.transcribe(audio, language)
        truth = true_text(path)
        results.append(
            {
                "audio": path.name,
                "clip_set": entry["clip_set"],
                "reference_text": truth,
                peer.name: {"text": result.text, "tokens": result.tokens},
                "tokens_equal": result.tokens == entry["torch"]["tokens"],
                "first_divergent_token": first_difference(entry["torch"]["tokens"], result.tokens),
                "wer_vs_reference": None if truth is None else word_error_rate(result.text, truth),
            }
        )
    return results
