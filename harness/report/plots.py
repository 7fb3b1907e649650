"""The report's figures as PNG bytes, each drawn only when its data is in the document.

Drawn on bare ``matplotlib.figure.Figure`` objects (the Agg canvas, no pyplot): no display, no
global figure state, safe in tests and CI. Errors span many decades, so they go on log axes;
cosine is plotted as 1 − cosine for the same reason.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from harness.compare.tolerances import Tolerances
from harness.compare.verdict import limits_of
from harness.report.speed_section import SPEED_ROWS, speedup, speedup_text

BLUE, RED, GREY, ORANGE = "#1f77b4", "#d62728", "#555555", "#ff7f0e"
GREEN, PURPLE = "#2ca02c", "#9467bd"
ENGINE_COLOURS = {
    "torch": BLUE,
    "max": RED,
    "max-float16": ORANGE,
    "ct2-float32": GREEN,
    "ct2-int8": PURPLE,
}
KINDS = {"isolated": ("o", BLUE), "chained": ("s", RED)}  # marker and colour per kind


def render(document: dict[str, Any]) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` for every figure the document has data for."""
    limits = limits_of(document)
    encoder = document.get("encoder") or {}
    teacher_forced = (document.get("decoder") or {}).get("teacher_forced") or {}
    figures: dict[str, Callable[[], Figure | None]] = {
        "encoder_stages.png": lambda: stages_figure(encoder, limits, "Encoder"),
        "encoder_frame_error.png": lambda: frame_error_figure(encoder.get("frame_errors")),
        "decoder_steps.png": lambda: decoder_steps_figure(teacher_forced.get("per_step")),
        "decoder_stages.png": lambda: stages_figure(teacher_forced, limits, "Decoder"),
        "speed.png": lambda: speed_figure(document.get("speed")),
    }
    pngs = {}
    for name, draw in figures.items():
        figure = draw()
        if figure is not None:
            pngs[name] = _png(figure)
    return pngs


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def stages_figure(section: dict[str, Any], limits: Tolerances, title: str) -> Figure | None:
    """The drift curve (rel_l2, isolated vs chained) beside 1 − min frame cosine, with limits.

    ``section`` is the encoder's or the teacher-forced decoder's: ``stages`` and, optionally,
    ``first_divergent_stage``. Isolated flat and chained rising slowly is round-off; a jump in
    isolated is a bug in that stage.
    """
    stages, divergent = section.get("stages"), section.get("first_divergent_stage")
    if not stages:
        return None
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    names = [s["stage"] for s in stages]
    for axes, metric, label in zip(
        figure.subplots(1, 2),
        ("rel_l2", "min_frame_cosine"),
        ("relative L2 error", "1 − min frame cosine"),
        strict=True,
    ):
        errors = {
            kind: [_error(s.get(kind, {}).get(metric), metric) for s in stages] for kind in KINDS
        }
        for kind, (marker, color) in KINDS.items():
            axes.plot(range(len(names)), errors[kind], marker=marker, color=color, label=kind)
            bound = limits.limit(kind, metric)
            if bound is not None:
                axes.axhline(
                    _error(bound, metric),
                    color=color,
                    linestyle="--",
                    linewidth=1,
                    label=f"{kind} limit",
                )
        if divergent in names:
            axes.axvline(
                names.index(divergent),
                color=ORANGE,
                linewidth=10,
                alpha=0.35,
                label="first divergent",
            )
        exact = [all(errors[kind][i] == 0 for kind in KINDS) for i in range(len(names))]
        labels = [
            name + ("\n(exact)" if same else "") for name, same in zip(names, exact, strict=True)
        ]
        axes.set_xticks(range(len(names)), labels)
        axes.tick_params(axis="x", labelrotation=45)
        _log_axes(axes, label)
    figure.suptitle(f"{title}: error per stage (log scale; lower is better)")
    return figure


def _error(value: float | None, metric: str) -> float:
    """The plotted error: 1 − cosine for cosines. An exact 0 has no place on a log axis and is
    left out (matplotlib masks it), a null is a gap."""
    if value is None:
        return math.nan
    return max(1.0 - value, 0.0) if "cosine" in metric else value


def _log_axes(axes: Axes, label: str) -> None:
    axes.set_yscale("log", nonpositive="mask")
    axes.set_ylabel(label)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize="small")


def frame_error_figure(frame_errors: dict[str, Any] | None) -> Figure | None:
    """Relative error of each encoder frame along time: padding behaving unlike speech shows."""
    if not frame_errors or not frame_errors.get("rel_error_per_frame"):
        return None
    errors = [_error(e, "rel_l2") for e in frame_errors["rel_error_per_frame"]]
    figure = Figure(figsize=(11, 3.6), layout="constrained")
    axes = figure.subplots()
    axes.plot(range(len(errors)), errors, color=RED, linewidth=0.8)
    speech = frame_errors.get("speech_frames")
    if speech is not None:
        axes.axvline(speech, color=GREY, linestyle="--", label="padded silence begins")
        axes.axvspan(speech, len(errors), color=GREY, alpha=0.08)
    axes.set_xlabel("encoder frame (20 ms each)")
    axes.set_xlim(0, len(errors))
    _log_axes(axes, "relative error per frame")
    figure.suptitle(f"Encoder output error along time, stage {frame_errors['stage']}")
    return figure


def decoder_steps_figure(per_step: list[dict[str, Any]] | None) -> Figure | None:
    """KL and top-2 gap per step; a top-1 mismatch is expected only where the gap is tiny."""
    if not per_step:
        return None
    figure = Figure(figsize=(11, 5), layout="constrained")
    kl_axes, gap_axes = figure.subplots(2, 1, sharex=True)
    steps = [s["step"] for s in per_step]
    kl_axes.plot(steps, [_error(s["kl"], "kl") for s in per_step], color=RED, label="KL")
    gap_axes.plot(steps, [s["top2_gap"] for s in per_step], color=BLUE, label="top-2 gap")
    mismatched = [s for s in per_step if not s["top1_match"]]
    if mismatched:
        gap_axes.scatter(
            [s["step"] for s in mismatched],
            [s["top2_gap"] for s in mismatched],
            color="black",
            marker="x",
            zorder=3,
            label="top-1 token differs",
        )
    _log_axes(kl_axes, "KL(PyTorch ‖ MAX), nats")
    gap_axes.set_ylabel("PyTorch top-1 − top-2 logit")
    gap_axes.set_xlabel("decoding step (teacher-forced)")
    gap_axes.grid(True, alpha=0.3)
    gap_axes.legend(fontsize="small")
    figure.suptitle("Decoder, step by step")
    return figure


def speed_figure(speed: dict[str, Any] | None) -> Figure | None:
    """Every engine side by side per measure (their units differ, so one panel each)."""
    measures = [(key, label) for key, label in SPEED_ROWS if key in (speed or {})]
    if not measures:
        return None
    engines = speed.get("engines", {})
    colours = [ENGINE_COLOURS.get(name, GREY) for name in engines]
    figure = Figure(figsize=(4.2 * len(measures), 3.8), layout="constrained")
    panels = figure.subplots(1, len(measures), squeeze=False)[0]
    for axes, (key, label) in zip(panels, measures, strict=True):
        medians = speed[key]["median"]
        values = [medians.get(e, 0.0) for e in engines]  # 0: not timed by this measure
        bars = axes.bar(list(engines.values()), values, color=colours)
        axes.bar_label(bars, fmt="%.3g")
        axes.set_title(label, fontsize="medium")
        axes.tick_params(axis="x", labelrotation=30, labelsize="small")
        axes.margins(y=0.15)
        if speedup(speed[key], "max", "torch") is not None:
            axes.set_xlabel(f"MAX vs PyTorch {speedup_text(speed[key])}", fontsize="small")
    figure.suptitle(f"Speed, lower is better ({speed.get('threads', '?')} CPU threads)")
    return figure
