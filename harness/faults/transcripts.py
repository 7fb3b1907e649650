"""Whether a planted fault changes the greedy transcript of the fixture clip (``--transcripts``).

``transcript_changed`` says whether the faulty model's greedy transcript of ``CLIP`` differs
from the faithful one's; it is null when either model has none (a ``MaxGraphError``), and
``transcript_error`` says why. It is decoded by openai-whisper's own ``transcribe`` through the
stage graphs (``StageWhisper``: chained, uncached) rather than the fused encoder and the cached
decoder step, which would cost every fault three more cold compiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.faults.catalogue import CLIP
from harness.faults.graph_errors import MaxGraphError, max_graph_errors
from harness.inputs.audio import load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.max_whisper.stage_whisper import StageWhisper
from harness.max_whisper.variant import Variant
from harness.pipeline.transcribe import transcribe
from harness.progress import Notify


@dataclass(frozen=True)
class Transcribed:
    """The greedy transcript of ``CLIP``, or (``text`` None) the MAX error that prevented it."""

    text: str | None
    error: str | None = None


def transcript(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, progress: Notify
) -> Transcribed:
    """Decode ``CLIP``; a graph MAX refuses is recorded, any other error propagates."""
    progress(f"transcribing {CLIP.name}")
    audio = load_audio(CLIP)
    try:
        with max_graph_errors():
            return Transcribed(transcribe(StageWhisper(checkpoint, engine, variant), audio).text)
    except MaxGraphError as error:
        return Transcribed(None, str(error))


def transcript_fields(faithful: Transcribed, faulty: Transcribed) -> dict[str, Any]:
    """The faulty transcript and whether it changed: unknown (None) when either model has none,
    since two failed runs are no evidence of the same text; the error says which failed."""
    error = faulty.error
    if error is None and faithful.error is not None:
        error = f"faithful model: {faithful.error}"
    return {
        "transcript_changed": None if error else faulty.text != faithful.text,
        "transcript": faulty.text,
        "transcript_error": error,
    }
