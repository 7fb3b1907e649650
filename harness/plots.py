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

from harness.render import SPEED_ROWS, speedup
from harness.tolerances import Tolerances
from harness.verdict import limits_of

# Float64 cosine resolves about 1e-16: smaller (or zero) 1 − cosine is drawn on this floor.
LOG_FLOOR = 1e-17
TORCH_COLOR, MAX_COLOR, LIMIT_COLOR = "#1f77b4", "#d62728", "#555555"


def render(document: dict[str, Any]) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` for every figure the document has data for."""
    limits = limits_of(document)
    teacher_forced = document.get("decoder", {}).get("teacher_forced") or {}
    figures: dict[str, Callable[[], Figure | None]] = {
        "encoder_stages.png": lambda: stages_figure(
            document.get("encoder", {}).get("stages"), limits, "Encoder"
        ),
        "encoder_frame_error.png": lambda: frame_error_figure(
            document.get("encoder", {}).get("frame_errors")
        ),
        "decoder_steps.png": lambda: decoder_steps_figure(teacher_forced.get("per_step")),
        "decoder_stages.png": lambda: stages_figure(
            teacher_forced.get("stages"), limits, "Decoder"
        ),
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


def stages_figure(
    stages: list[dict[str, Any]] | None, limits: Tolerances, title: str
) -> Figure | None:
    """The drift curve (rel_l2, isolated vs chained) beside 1 − min frame cosine, with limits.

    Isolated flat and chained rising slowly is round-off; a jump in isolated is a bug there.
    """
    if not stages:
        return None
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    error_axes, cosine_axes = figure.subplots(1, 2)
    names = [s["stage"] for s in stages]
    for axes, metric, label in (
        (error_axes, "rel_l2", "relative L2 error"),
        (cosine_axes, "min_frame_cosine", "1 − min frame cosine"),
    ):
        for kind, marker, color in (("isolated", "o", TORCH_COLOR), ("chained", "s", MAX_COLOR)):
            values = [_error(s[kind].get(metric), metric) for s in stages]
            axes.plot(names, values, marker=marker, color=color, label=kind)
            bound = limits.limit(kind, metric)
            if bound is not None:
                axes.axhline(
                    _error(bound, metric),
                    color=color,
                    linestyle="--",
                    linewidth=1,
                    label=f"{kind} limit",
                )
        _log_axes(axes, label)
        axes.tick_params(axis="x", labelrotation=45)
    figure.suptitle(f"{title}: error per stage (log scale; lower is better)")
    return figure


def _error(value: float | None, metric: str) -> float:
    """The plotted error: 1 − cosine for cosines, floored for the log axis; NaN is a gap."""
    if value is None:
        return math.nan
    error = 1.0 - value if "cosine" in metric else value
    return max(error, LOG_FLOOR)


def _log_axes(axes: Axes, label: str) -> None:
    axes.set_yscale("log")
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
    axes.plot(range(len(errors)), errors, color=MAX_COLOR, linewidth=0.8)
    speech = frame_errors.get("speech_frames")
    if speech is not None:
        axes.axvline(speech, color=LIMIT_COLOR, linestyle="--", label="padded silence begins")
        axes.axvspan(speech, len(errors), color=LIMIT_COLOR, alpha=0.08)
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
    kl_axes.plot(steps, [_error(s["kl"], "kl") for s in per_step], color=MAX_COLOR, label="KL")
    gap_axes.plot(steps, [s["top2_gap"] for s in per_step], color=TORCH_COLOR, label="top-2 gap")
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
    """PyTorch and MAX side by side per measure (their units differ, so one panel each)."""
    measures = [(key, label) for key, label in SPEED_ROWS if key in (speed or {})]
    if not measures:
        return None
    figure = Figure(figsize=(3.6 * len(measures), 3.6), layout="constrained")
    panels = figure.subplots(1, len(measures), squeeze=False)[0]
    for axes, (key, label) in zip(panels, measures, strict=True):
        pair = speed[key]
        values = [pair.get("torch") or 0.0, pair.get("max") or 0.0]
        bars = axes.bar(["PyTorch", "MAX"], values, color=[TORCH_COLOR, MAX_COLOR])
        axes.bar_label(bars, fmt="%.3g")
        axes.set_title(label, fontsize="medium")
        axes.margins(y=0.15)
        ratio = speedup(pair)
        if ratio is not None:
            axes.set_xlabel(f"MAX speed-up {ratio:.2f}×")
    figure.suptitle(f"Speed, lower is better ({speed.get('threads', '?')} CPU threads)")
    return figure
