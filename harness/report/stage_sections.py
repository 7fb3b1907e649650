"""The report's numerical comparisons of MAX's graphs with PyTorch: the encoder stage by stage,
the mel and the one-graph encoder, the teacher-forced decoder. They share the stage table (each
stage's isolated and chained error under a row of its limits) and the metric cells, so they live
together; a stage over tolerance gets the float64 arbiter's line under its table.
"""

from __future__ import annotations

from typing import Any

from harness.compare.tolerances import Tolerances
from harness.compare.verdict import check, stage_failures
from harness.report.cells import db, fixed, limit_cell, one_minus, sci, status_cell
from harness.report.content import Row, Section, Table
from harness.report.noise_floor_section import arbiter_lines, isolated, isolated_stages

STAGE_COLUMNS = (
    "stage",
    "isolated rel_l2",
    "isolated 1−cos",
    "isolated 1−min frame cos",
    "isolated max_abs",
    "isolated SNR dB",
    "chained rel_l2",
    "chained 1−min frame cos",
    "status",
)
METRIC_LABELS = {"cosine": "1−cos", "min_frame_cosine": "1−min frame cos", "snr_db": "SNR dB"}
METRIC_COLUMNS = ("rel_l2", "1−cos", "1−min frame cos", "max_abs", "SNR dB")


def encoder_section(encoder: dict[str, Any] | None, limits: Tolerances) -> Section | None:
    if not encoder or not encoder.get("stages"):
        return None
    divergent = encoder.get("first_divergent_stage")
    localised_by = encoder.get("localised_by", "isolated")
    bullets = [
        "Isolated: each MAX stage fed PyTorch's input to it (its own error). Chained: fed MAX's "
        "previous output (the drift accumulated so far).",
        f"First divergent stage (first {localised_by} error over tolerance): {divergent or 'none'}",
        *arbiter_lines(isolated_stages(encoder["stages"]), limits),
    ]
    if localised_by == "chained":
        bullets[0] = (
            "Chained only: the candidate exposes its outputs, not its stage inputs; one run of "
            "its one graph gives every stage boundary, each compared with PyTorch's."
        )
    if encoder.get("audio"):
        bullets.insert(0, f"Input: 30 s window of {encoder['audio']} (speech, then padding)")
    return Section(
        "Encoder, stage by stage",
        bullets,
        [stage_table(encoder["stages"], limits, divergent)],
        ["encoder_stages.png", "encoder_frame_error.png"],
    )


def stage_table(stages: list[dict[str, Any]], limits: Tolerances, divergent: str | None) -> Table:
    """Isolated and chained metrics per stage under a row of the limits they are held to."""
    limit_row = Row(
        (
            "limit",
            limit_cell(limits, "isolated", "rel_l2"),
            limit_cell(limits, "isolated", "cosine"),
            limit_cell(limits, "isolated", "min_frame_cosine"),
            "",
            "",
            limit_cell(limits, "chained", "rel_l2"),
            limit_cell(limits, "chained", "min_frame_cosine"),
            "",
        ),
        style="limit",
    )
    rows = [limit_row]
    for result in stages:
        iso, chained = result.get("isolated", {}), result["chained"]
        bad = stage_failures(result, limits)
        first = result["stage"] == divergent
        rows.append(
            Row(
                (
                    result["stage"] + (" ⟵ first divergent" if first else ""),
                    *(_metric_cells(iso) if iso else ("—",) * len(METRIC_COLUMNS)),
                    sci(chained.get("rel_l2")),
                    one_minus(chained.get("min_frame_cosine")),
                    status_cell(bad),
                ),
                style="divergent" if first else "",
            )
        )
    return Table(STAGE_COLUMNS, rows)


def whole_graphs_section(document: dict[str, Any], limits: Tolerances) -> Section | None:
    """The mel front end and the one-graph encoder: single comparisons, one row each."""
    rows = []
    if "mel" in document:
        rows.append(_single_row("mel spectrogram", document["mel"], "mel", limits))
    fused = document.get("encoder", {}).get("fused")
    if fused:
        rows.append(_single_row("encoder, one fused graph", fused, "fused", limits))
    if not rows:
        return None
    mel = [s for s in isolated(document) if s.stage == "mel"]
    return Section(
        "Mel spectrogram and fused encoder",
        [
            "Each is one MAX graph fed the same input as PyTorch, compared with its output.",
            *arbiter_lines(mel, limits),
        ],
        [Table(("comparison", *METRIC_COLUMNS, "limit", "status"), rows)],
    )


def _single_row(name: str, metrics: dict[str, Any], kind: str, limits: Tolerances) -> Row:
    limit = ", ".join(
        f"{METRIC_LABELS.get(metric, metric)} {limit_cell(limits, kind, metric)}"
        for metric in limits.limits.get(kind, {})
    )
    return Row((name, *_metric_cells(metrics), limit, status_cell(check(metrics, kind, limits))))


def decoder_section(teacher_forced: dict[str, Any] | None, limits: Tolerances) -> Section | None:
    if not teacher_forced:
        return None
    mismatched = [s["step"] for s in teacher_forced.get("per_step", []) if not s["top1_match"]]
    bullets = [
        "Teacher forcing: both decoders read the same token sequence, so every step compares the "
        "next-token distributions on equal terms.",
        f"Steps where the top-1 token differs: {', '.join(map(str, mismatched)) or 'none'}",
    ]
    summary = Table(
        ("steps", "top-1 agreement", "max KL", "max |Δ logit|", "min top-2 gap", "status"),
        [
            Row(
                (
                    str(teacher_forced["steps"]),
                    f"{teacher_forced['top1_agreement']:.2%}",
                    sci(teacher_forced.get("max_kl")),
                    sci(teacher_forced.get("max_abs_logit")),
                    fixed(teacher_forced.get("min_top2_gap")),
                    status_cell(check(teacher_forced, "teacher_forced", limits)),
                )
            )
        ],
    )
    tables = [summary]
    if teacher_forced.get("stages"):
        divergent = teacher_forced.get("first_divergent_stage")
        tables.append(stage_table(teacher_forced["stages"], limits, divergent))
        bullets += arbiter_lines(isolated_stages(teacher_forced["stages"]), limits)
    return Section(
        "Decoder, teacher-forced", bullets, tables, ["decoder_steps.png", "decoder_stages.png"]
    )


def _metric_cells(metrics: dict[str, Any]) -> tuple[str, ...]:
    return (
        sci(metrics.get("rel_l2")),
        one_minus(metrics.get("cosine")),
        one_minus(metrics.get("min_frame_cosine")),
        sci(metrics.get("max_abs")),
        db(metrics.get("snr_db")),
    )
