"""Everything a report folder holds besides parity.json: report.md, report.html, the figures as
PNG files and summary.csv. ``report.write`` calls ``write_outputs`` on its staging folder, so the
whole set appears at once or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.compare.verdict import Comparison, check, comparisons, limits_of
from harness.report import plots
from harness.report.html import html
from harness.report.markdown import markdown

SUMMARY_METRICS = ("rel_l2", "cosine", "min_frame_cosine", "max_abs", "snr_db")


def write_outputs(document: dict[str, Any], folder: Path) -> list[Path]:
    """Write the rendered report into ``folder`` (which must exist); return the files written."""
    images = plots.render(document)
    written = []
    for name, png in images.items():
        (folder / name).write_bytes(png)
        written.append(folder / name)
    (folder / "report.md").write_text(markdown(document, images))
    (folder / "report.html").write_text(html(document, images))
    write_summary_csv(document, folder / "summary.csv")
    return written + [folder / "report.md", folder / "report.html", folder / "summary.csv"]


def write_summary_csv(document: dict[str, Any], path: Path) -> None:
    """One row per comparison (section, stage, kind) with its metrics and verdict, for pandas or
    a spreadsheet: the stage tables without the formatting."""
    limits = limits_of(document)
    rows = [_summary_row(c, check(c.metrics, c.kind, limits)) for c in comparisons(document)]
    columns = ["section", "stage", "kind", *SUMMARY_METRICS, "ok", "failures"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def _summary_row(comparison: Comparison, failures: list[str]) -> dict[str, Any]:
    return {
        "section": comparison.section,
        "stage": comparison.stage,
        "kind": comparison.kind,
        **{metric: comparison.metrics.get(metric) for metric in SUMMARY_METRICS},
        "ok": not failures,
        "failures": "; ".join(failures),
    }
