"""The report's drift table: every engine against PyTorch on the same inputs (MAX's decoding
weights modes and CTranslate2), one row each, so MAX float32's error reads next to what other
engines, and MAX's own quantised modes, get away with.
"""

from __future__ import annotations

from typing import Any

from harness.compare.tolerances import Tolerances
from harness.compare.verdict import mode_failures
from harness.report.cells import one_minus, sci, status_cell
from harness.report.content import Cell, Row, Section, Table
from harness.report.transcript_sections import CLIP_SETS

PEER_COLUMNS = (
    "engine",
    "encoder rel_l2",
    "encoder 1−min frame cos",
    "teacher-forced top-1",
    "max KL",
    "max |Δ logit|",
    "transcripts token-equal to PyTorch",
    "WER vs true text",
    "status",
)


def peers_section(document: dict[str, Any], limits: Tolerances) -> Section | None:
    """Every engine's drift from PyTorch on the same inputs: MAX's weights modes, CTranslate2."""
    peers = document.get("peers")
    if not peers:
        return None
    title = "Drift of every engine: MAX weights modes and CTranslate2 (faster-whisper's engine)"
    skipped = [f"CTranslate2 not compared: {peers['skipped']}."] if "skipped" in peers else []
    if "labels" not in peers:
        return Section(title, skipped)
    wer = document.get("wer") or {}
    first = "speech" if "speech" in wer else next(iter(wer), None)
    rows = [
        _peer_row(
            label,
            peers[name],
            first,
            status_cell(mode_failures(peers[name], name, limits))
            if name.startswith("max-")
            else "",
        )
        for name, label in peers["labels"].items()
    ]
    steps = peers["max"]["teacher_forced"]["steps"]
    bullets = [
        "Each engine against PyTorch float32 on the same checkpoint and inputs: the encoder on "
        f"the report's window, the decoder teacher-forced on its true text ({steps} positions, "
        f"from position {peers['teacher_forced_from_step']}: CTranslate2 gives no logits of "
        "the prompt), the transcripts of the clips above.",
        "A MAX weights mode stores the decoding step's matrices in that format (float32 "
        "activations; GGML blocks through ops.qmatmul); its encoder is MAX float32's. Its limits "
        "are the weights:MODE entries of fixtures/tolerances.json.",
        *skipped,
        "Versions: " + ", ".join(f"{k} {v}" for k, v in peers.get("versions", {}).items()),
    ]
    if first:
        torch_wer = wer[first]["torch"]
        bullets.append(f"WER: {CLIP_SETS.get(first, first)}, pooled; PyTorch {torch_wer:.1%}.")
    return Section(title, bullets, [Table(PEER_COLUMNS, rows)])


def _peer_row(label: str, entry: dict[str, Any], clip_set: str | None, status: Cell) -> Row:
    encoder, teacher_forced = entry.get("encoder"), entry["teacher_forced"]
    wer = entry["wer"].get(clip_set) if clip_set else None
    return Row(
        (
            label,
            sci(encoder["rel_l2"]) if encoder else "as MAX float32",
            one_minus(encoder["min_frame_cosine"]) if encoder else "",
            f"{teacher_forced['top1_agreement']:.2%}",
            sci(teacher_forced["max_kl"]),
            sci(teacher_forced["max_abs_logit"]),
            f"{entry['tokens_equal']} / {entry['clips']}",
            "—" if wer is None else f"{wer:.1%}",
            status,
        )
    )
