"""The parity report: one JSON document (``parity.json``) and its Markdown rendering.

``build`` runs the comparisons and returns the document; ``write`` puts it on disk atomically
(a temporary folder renamed into place) so a failed run never leaves half a report behind.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import whisper

from harness import checkpoints, tolerances, tracer
from harness.audio import load_audio
from harness.checkpoints import Checkpoint
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import DTYPES, Engine
from harness.parity import encoder_parity
from harness.progress import silent
from harness.render import markdown

SCHEMA = 1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = REPO / "fixtures" / "audio" / "sentences.wav"


def build(
    checkpoint: Checkpoint,
    device: str = "cpu",
    dtype: str = "float32",
    encoder_audio: Path = DEFAULT_AUDIO,
    progress=silent,
) -> dict[str, Any]:
    """Run every comparison for ``checkpoint`` and return the ``parity.json`` document."""
    limits = tolerances.load(dtype)
    engine = Engine(device=device, dtype=DTYPES[dtype], on_compile=lambda n: progress(f"compiling {n}"))
    audio = load_audio(encoder_audio)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), checkpoint.dims.n_mels)
    progress("PyTorch reference: tracing the encoder")
    reference = tracer.trace_encoder(checkpoint.model.encoder, mel.numpy()[None])
    candidate = MaxAudioEncoder(checkpoint.dims, checkpoint.model.state_dict(), engine)
    speech = min(1.0, len(audio) / whisper.audio.N_SAMPLES)
    return {
        "schema": SCHEMA,
        "model": model_section(checkpoint),
        "device": device,
        "dtype": dtype,
        "versions": versions(),
        "encoder": {
            "audio": encoder_audio.name,
            **encoder_parity(candidate, reference, limits, speech, progress),
        },
        "tolerances": limits.limits,
        "compile_s": engine.compile_seconds,
    }


def model_section(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "name": checkpoint.name,
        "weights": checkpoint.weights,
        "checkpoint": str(checkpoint.path),
        "sha256": checkpoint.sha256,
        "dims": asdict(checkpoint.dims),
    }


def versions() -> dict[str, str]:
    return {
        "max": version("max"),
        "torch": version("torch"),
        "whisper": version("openai-whisper"),
        "python": platform.python_version(),
    }


def default_model() -> str:
    """``tiny`` when its real checkpoint is cached, else the stand-in (said loudly by the caller)."""
    if checkpoints.pretrained_available("tiny"):
        return "tiny"
    return "synthetic:tiny"


def write(report: dict[str, Any], out_dir: Path) -> None:
    """Write parity.json and report.md into ``out_dir``, replacing it whole or not at all."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (staging / "parity.json").write_text(to_json(report))
        (staging / "report.md").write_text(markdown(report))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON: an infinite SNR (bit-identical tensors) is written as null."""
    return json.dumps(_finite(report), indent=1, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
