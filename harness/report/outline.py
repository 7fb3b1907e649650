"""What the report says, in order, once: ``outline`` turns ``parity.json`` into sections and
tables; ``markdown`` (report/markdown.py) and ``html`` (report/html.py) only format them, so the
two can never tell different stories.

The verdict and the weights' provenance come first, loudly when the weights are not pretrained;
then the encoder stage table, the mel and fused-encoder rows, the decoder, each stage's noise
floor next to its tolerance, the transcripts side by side, the language, every engine's drift,
the speed. Each section is built by the module for its part of the report; sections absent from
the document are skipped.
"""

from __future__ import annotations

from typing import Any

from harness.candidates.section import candidate_section
from harness.compare.verdict import limits_of, verdict
from harness.report.content import Outline
from harness.report.noise_floor_section import noise_floor_section
from harness.report.peers_section import peers_section
from harness.report.speed_section import speed_section
from harness.report.stage_sections import decoder_section, encoder_section, whole_graphs_section
from harness.report.transcript_sections import language_section, transcripts_section


def outline(document: dict[str, Any]) -> Outline:
    """The report's content, format-free. Optional sections appear only when present."""
    model = document["model"]
    limits = limits_of(document)
    sections = [
        candidate_section(document.get("candidate")),
        encoder_section(document.get("encoder"), limits),
        whole_graphs_section(document, limits),
        decoder_section(document.get("decoder", {}).get("teacher_forced"), limits),
        noise_floor_section(document, limits),
        transcripts_section(document.get("transcripts"), document.get("wer") or {}),
        language_section(document.get("language"), limits),
        peers_section(document, limits),
        speed_section(document.get("speed")),
    ]
    return Outline(
        title=f"Parity report: {model['name']} ({document['device']}, {document['dtype']})",
        banner=_banner(model["weights"]),
        verdict=verdict(document),
        provenance=_provenance(document),
        sections=[s for s in sections if s],
    )


def _banner(weights: str) -> str | None:
    """Random or hand-made weights give meaningful numerical parity but meaningless text."""
    if weights == "pretrained":
        return None
    if weights == "fixture":
        return (
            "FIXTURE WEIGHTS — not a pretrained Whisper checkpoint but a small one trained by this "
            "project on espeak-ng speech with a vocabulary of a few hundred words: its WER means "
            "something on its held-out clips (*_heldout), not on sentences outside its vocabulary."
        )
    return (
        f"{weights.upper()} WEIGHTS — not a pretrained Whisper checkpoint: numerical parity is "
        "meaningful, the transcribed text is not."
    )


def _provenance(document: dict[str, Any]) -> list[str]:
    model = document["model"]
    lines = [
        f"Weights: {model['weights']}, checkpoint {model['checkpoint']}",
        f"Checkpoint sha256: {model['sha256']}",
        *_source(model.get("source")),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in document["versions"].items()),
    ]
    if model.get("dims"):
        lines.append("Dimensions: " + ", ".join(f"{k} {v}" for k, v in model["dims"].items()))
    compile_s = document.get("compile_s")  # by compiled module: its graphs' names, joined by +
    if compile_s:
        graphs = sum(len(unit.split(" + ")) for unit in compile_s)
        lines.append(
            f"MAX graphs compiled or loaded: {graphs} in {len(compile_s)} modules, "
            f"{sum(compile_s.values()):.1f} s"
        )
    return lines


def _source(source: dict[str, Any] | None) -> list[str]:
    """Where converted weights came from: format, packages, the hash of the file as shipped."""
    if not source:
        return []
    origin = ", ".join(source.get("packages") or source.get("files", []))
    what = f"{source['format']} {source['dtype']}"
    lines = [f"Converted from: {what} ({origin}), sha256 {source['sha256']}"]
    if source.get("note"):
        lines.append(f"Weights: {source['note']}")
    return lines
