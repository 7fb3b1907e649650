"""Parity tolerances, read from the one file that records them and why: fixtures/tolerances.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.paths import FIXTURES

TOLERANCE_FILE = FIXTURES / "tolerances.json"
HIGHER_IS_BETTER = {
    "cosine",
    "min_frame_cosine",
    "snr_db",
    "top1_agreement",
    "min_top2_gap",
    "tokens_equal_fraction",
}


@dataclass(frozen=True)
class Tolerances:
    """The limits for one dtype: ``limits[kind][metric]`` is a bound (min or max, see the file)."""

    dtype: str
    limits: dict[str, dict[str, float]]

    def limit(self, kind: str, metric: str) -> float | None:
        return self.limits.get(kind, {}).get(metric)

    def violations(self, metrics: Mapping[str, Any], kind: str) -> list[str]:
        """One ``"metric value vs limit"`` line per metric of ``kind`` that breaks its limit.

        A gated metric that is missing (or None) or NaN fails: a stage must not pass for want of
        a number.
        """
        failures = []
        for metric, bound in self.limits.get(kind, {}).items():
            value = metrics.get(metric)
            if value is None:
                failures.append(f"{metric} missing")
            elif metric in HIGHER_IS_BETTER and not value >= bound:
                failures.append(f"{metric} {value:.7g} < {bound:.7g}")
            elif metric not in HIGHER_IS_BETTER and not value <= bound:
                failures.append(f"{metric} {value:.3g} > {bound:.3g}")
        return failures


def load(dtype: str, device: str = "cpu", path: Path = TOLERANCE_FILE) -> Tolerances:
    """The tolerances of ``dtype``; each entry in the file is ``{"value": x, "why": "..."}``.

    A ``<dtype>@<device>`` table (``float32@gpu``: MAX's float32 runs on TF32 tensor cores
    there) replaces the kinds it measured; the others keep the dtype's limits.
    """
    table = json.loads(path.read_text())
    if dtype not in table:
        raise HarnessError(f"{path}: no tolerances for dtype {dtype!r}")
    kinds = {**table[dtype], **table.get(f"{dtype}@{device}", {})}
    limits = {
        kind: {metric: entry["value"] for metric, entry in metrics.items()}
        for kind, metrics in kinds.items()
        if not kind.startswith("_")
    }
    return Tolerances(dtype, limits)
