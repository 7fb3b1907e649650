"""The parity report: one JSON document (``parity.json``), and the folder rendered from it.

``build`` runs the comparisons and returns the document; ``write`` puts it and everything
rendered from it on disk at once (report/files.py), so a failed run never leaves half a report
behind.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper

from harness.candidates.registry import ours_section
from harness.compare import tolerances
from harness.compare.decoder_parity import decoder_parity, teacher_tokens
from harness.compare.language import compare_languages
from harness.compare.metrics import compare
from harness.compare.peer_parity import peer_parity
from harness.compare.stage_walk import encoder_parity
from harness.compare.tolerances import Tolerances
from harness.compare.transcripts import (
    compare_transcripts,
    corpus_wer,
    fixture_clips,
    load_clips,
    true_text,
)
from harness.compare.verdict import verdict
from harness.errors import HarnessError
from harness.inputs.audio import load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.whisper import MaxWhisper
from harness.paths import REPO
from harness.peers import ctranslate2 as ctranslate2_peer
from harness.peers.ctranslate2 import CTranslate2Whisper
from harness.progress import Notify, silent
from harness.reference import tracer
from harness.reference.noise_floor import Float64Reference
from harness.report.files import replaced_folder, to_json
from harness.report.outputs import write_outputs
from harness.speed.measure import Plan, measure

SCHEMA = 1
# 25 s of real reading (five LibriVox utterances end to end) with its true text: one window full
# of speech for the encoder, and 77 tokens of text to teacher-force the decoder with.
DEFAULT_AUDIO = REPO / "fixtures" / "speech" / "librivox_window.wav"


def build(
    checkpoint: Checkpoint,
    device: str = "cpu",
    dtype: str = "float32",
    audio: list[Path] | None = None,
    progress: Notify = silent,
    speed: Plan | None = None,
    peers: bool = True,
    weights: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every comparison for ``checkpoint`` and return the ``parity.json`` document.

    The mel, encoder and teacher-forced decoder are compared on the 30 s window of
    ``DEFAULT_AUDIO``; transcripts on every clip of ``audio`` (default: the fixture clips).
    Each of those stages is also recomputed in float64 (cheap next to MAX's compiles): the
    reference's noise floor (``noise_floor``) and the arbiter's verdict on MAX (``arbiter``).
    MAX with each of the other decoding ``weights`` modes (quantised: ``quantized.py``) and,
    with ``peers`` (CPU, float32), CTranslate2 float32 and int8 run the same checkpoint through
    the same comparisons (``peer_parity.py``), each with its drift from PyTorch. With a
    ``speed`` plan, PyTorch, MAX, its modes and the peers are timed side by side, first.
    """
    limits = tolerances.load(dtype, device)
    clips = load_clips(audio or fixture_clips())
    engine = Engine(device, DTYPES[dtype], on_compile=lambda n: progress(f"compiling {n}"))
    candidate = MaxWhisper(checkpoint, engine)
    window, mel, speech = encoder_window(checkpoint)
    progress("PyTorch reference: tracing the encoder")
    reference = tracer.trace_encoder(checkpoint.model.encoder, mel[None])
    tokens = teacher_tokens(checkpoint, true_text(DEFAULT_AUDIO) or "")
    float64 = Float64Reference(checkpoint.model, reference["ln_post"])
    engines, skipped = peer_engines(checkpoint, device, dtype) if peers else ([], "not asked for")
    modes = [MaxWhisper(checkpoint, engine, weights=w) for w in weights if w != "float32"]
    # Timed first, before this process runs MAX (speed/engine_process.py says why).
    timings = measure(checkpoint, candidate, speed, progress, engines, modes) if speed else None
    document = {
        **header(checkpoint, device, dtype, limits),
        "candidate": ours_section(),
        **mel_section(candidate, window, mel, float64, limits),
        "encoder": {
            "audio": DEFAULT_AUDIO.name,
            **encoder_parity(candidate.audio_encoder, reference, limits, speech, progress, float64),
        },
        "decoder": {
            "teacher_forced": decoder_parity(
                checkpoint,
                candidate.text_decoder,
                reference["ln_post"],
                tokens,
                limits,
                progress,
                float64,
            )
        },
        "noise_floor": float64.floors,
        "transcripts": compare_transcripts(checkpoint, candidate, clips, progress),
    }
    document["wer"] = corpus_wer(document["transcripts"])
    languages = compare_languages(checkpoint, candidate, clips, progress)
    if languages is not None:
        document["language"] = languages
    if engines or modes:
        document["peers"] = peer_parity(
            checkpoint,
            modes,
            engines,
            mel[None],
            reference["ln_post"],
            tokens,
            document,
            clips,
            progress,
        )
    if skipped:
        document.setdefault("peers", {})["skipped"] = skipped
    if timings:
        document["speed"] = timings
    document["compile_s"] = engine.compile_seconds
    document["verdict"] = verdict(document)
    return document


def encoder_window(checkpoint: Checkpoint) -> tuple[np.ndarray, np.ndarray, float]:
    """``DEFAULT_AUDIO``'s 30 s window, its log-mel (n_mels, frames) and the share of the window
    that is speech rather than padding."""
    samples = load_audio(DEFAULT_AUDIO)
    window = whisper.pad_or_trim(samples)
    mel = whisper.log_mel_spectrogram(window, checkpoint.dims.n_mels).numpy()
    return window, mel, min(1.0, len(samples) / whisper.audio.N_SAMPLES)


def peer_engines(
    checkpoint: Checkpoint, device: str, dtype: str
) -> tuple[list[CTranslate2Whisper], str | None]:
    """CTranslate2 float32 and int8 on ``checkpoint``, or none and the reason."""
    if device != "cpu" or dtype != "float32":
        return [], "CTranslate2 is compared on the CPU with float32 models only"
    try:
        return ctranslate2_peer.peers(checkpoint, torch.get_num_threads()), None
    except HarnessError as unavailable:
        return [], str(unavailable)


def mel_section(
    candidate: MaxWhisper,
    window: np.ndarray,
    mel: np.ndarray,
    float64: Float64Reference,
    limits: Tolerances,
) -> dict[str, Any]:
    """``mel``: MAX's log-mel of ``window`` against whisper's (``mel``), compared as (frames,
    n_mels) so the per-frame cosine is per row; ``mel_arbiter``: the float64 arbiter on it."""
    max_mel = candidate.log_mel(window).T
    limit = limits.limit("mel", "rel_l2") or limits.limit("isolated", "rel_l2")
    return {
        "mel": compare(max_mel, mel.T),
        "mel_arbiter": float64.arbitrate("mel", window, mel.T, max_mel, limit),
    }


def header(checkpoint: Checkpoint, device: str, dtype: str, limits: Tolerances) -> dict[str, Any]:
    """What every parity.json opens with: its schema, the model and where its weights came from,
    the device, dtype, versions and the tolerances it is judged by."""
    return {
        "schema": SCHEMA,
        "model": model_section(checkpoint),
        "device": device,
        "dtype": dtype,
        "versions": versions(),
        "tolerances": limits.limits,
    }


def model_section(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint and, for converted weights, where they came from (``source``)."""
    section = {
        "name": checkpoint.name,
        "weights": checkpoint.weights,
        "checkpoint": str(checkpoint.path),
        "sha256": checkpoint.sha256,
        "dims": asdict(checkpoint.dims),
    }
    if checkpoint.source:
        section["source"] = checkpoint.source
    return section


def versions() -> dict[str, str]:
    return {
        "max": version("max"),
        "torch": version("torch"),
        "whisper": version("openai-whisper"),
        "python": platform.python_version(),
    }


def write(report: dict[str, Any], out_dir: Path) -> None:
    """Write parity.json, report.md/.html, plots and summary.csv into ``out_dir``, whole or not
    at all."""
    with replaced_folder(out_dir) as staging:
        (staging / "parity.json").write_text(to_json(report))
        write_outputs(report, staging)
