"""How a number, a limit or a verdict reads in a table cell, the same in every section: errors in
scientific notation, cosines as 1 − cosine, a missing value as a dash.
"""

from __future__ import annotations

from harness.compare.tolerances import Tolerances
from harness.report.content import Status


def status_cell(failures: list[str]) -> Status:
    return Status(True, "OK") if not failures else Status(False, "NOT OK: " + "; ".join(failures))


def limit_cell(limits: Tolerances, kind: str, metric: str) -> str:
    value = limits.limit(kind, metric)
    if value is None:
        return ""
    return f"≤ {sci(1 - value if 'cosine' in metric else value)}"


def sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def fixed(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def one_minus(cosine: float | None) -> str:
    """1 − cosine: 0.9999999999998 and 0.9999999 both print as 1.000000 otherwise."""
    return "—" if cosine is None else sci(max(1.0 - cosine, 0.0))


def db(value: float | None) -> str:
    return "∞" if value is None or value == float("inf") else f"{value:.1f}"
