"""``python -m harness gate REPORT [--baseline BASELINE] [--factor F]``: the check CI trusts.

Exit 0 when the report's verdict passes and, against a baseline report of the same model, device
and dtype, no comparison's ``rel_l2`` grew more than ``factor`` times. Exit 1 with one line per
failure otherwise. Exit 2 with one ``error:`` line when a file is missing, not JSON or not a
schema-1 parity document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.compare.verdict import comparisons, verdict
from harness.errors import HarnessError

SCHEMA = 1
# A decade: reshuffled float32 round-off (another fusion, summation order or MAX release) moves
# rel_l2 by a few times, while lost precision (TF32 or bf16 accumulation, a dropped upcast)
# moves it by 100 times or more, usually still inside the absolute tolerances.
REGRESSION_FACTOR = 10.0
# One float32 rounding: a bit-identical baseline (rel_l2 0, e.g. an embedding lookup) is
# compared as if it had this error, so a last-bit change is not an infinite regression.
ROUNDING_FLOOR = 2.0**-24


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gate`` on the harness command line (harness/cli.py)."""
    parser = subparsers.add_parser(
        "gate", help="exit 0 only if a parity report passes (and did not regress)"
    )
    _arguments(parser)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", type=Path, help="parity.json to judge")
    parser.add_argument("--baseline", type=Path, help="an earlier parity.json to compare with")
    parser.add_argument(
        "--factor",
        type=float,
        default=REGRESSION_FACTOR,
        help=f"most any rel_l2 may grow over the baseline (default {REGRESSION_FACTOR:g}x)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per failure and return the exit status; bad input raises HarnessError."""
    if not args.factor > 0:
        raise HarnessError(f"--factor must be positive, got {args.factor}")
    document = load(args.report)
    failures = _checked(args.report, lambda: verdict(document)["failures"])
    if args.baseline:
        baseline = load(args.baseline)
        _same_setup(args.baseline, baseline, document)
        previous = _checked(args.baseline, lambda: rel_l2s(baseline))
        failures += _checked(args.report, lambda: regressions(document, previous, args.factor))
    for failure in failures:
        print(failure)
    print(f"gate: {'FAIL' if failures else 'PASS'} {args.report}")
    return 1 if failures else 0


def load(path: Path) -> dict[str, Any]:
    """The parity document at ``path``, or a HarnessError naming the file and the problem."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise HarnessError(f"{path}: not JSON (not UTF-8 text)") from None
    except OSError as error:
        raise HarnessError(f"{path}: cannot read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise HarnessError(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise HarnessError(f"{path}: not a schema-{SCHEMA} parity document (schema {found!r})")
    if not isinstance(document.get("dtype"), str):
        raise HarnessError(f"{path}: parity document without a dtype")
    encoder = document.get("encoder")
    failed_to_build = document.get("candidate", {}).get("findings")  # judged by the verdict
    if (not isinstance(encoder, dict) or not encoder.get("stages")) and not failed_to_build:
        # Every report compares the encoder: without it, nothing failing would mean nothing run.
        raise HarnessError(f"{path}: parity document without encoder stages")
    return document


def _checked(path: Path, read: Callable[[], Any]) -> Any:
    """Run ``read`` on a loaded document, turning a malformed section into a one-line error."""
    try:
        return read()
    except (KeyError, TypeError, AttributeError) as error:
        raise HarnessError(f"{path}: malformed parity document ({error!r})") from None


def _same_setup(path: Path, baseline: dict[str, Any], document: dict[str, Any]) -> None:
    """Errors from different models, devices or dtypes differ by design: refuse to compare."""

    def setup(d: dict[str, Any]) -> tuple:
        return (d.get("model", {}).get("name"), d.get("device"), d["dtype"])

    if setup(baseline) != setup(document):
        raise HarnessError(
            f"{path}: baseline is {' '.join(map(str, setup(baseline)))}, "
            f"report is {' '.join(map(str, setup(document)))}"
        )


def rel_l2s(document: dict[str, Any]) -> dict[str, float]:
    """``rel_l2`` of every comparison that has one, by label (``"encoder blocks.2 chained"``)."""
    return {
        c.label: c.metrics["rel_l2"]
        for c in comparisons(document)
        if c.metrics.get("rel_l2") is not None
    }


def regressions(document: dict[str, Any], baseline: dict[str, float], factor: float) -> list[str]:
    """One line per comparison whose ``rel_l2`` exceeds ``factor`` times the baseline's.

    Only comparisons present in both are judged; a null (NaN) rel_l2 is the verdict's to fail.
    """
    failures = []
    for label, value in rel_l2s(document).items():
        if label not in baseline:
            continue
        limit = factor * max(baseline[label], ROUNDING_FLOOR)
        if not value <= limit:
            failures.append(
                f"{label} rel_l2 {value:.3g} > {limit:.3g} "
                f"({factor:g} x baseline {baseline[label]:.3g})"
            )
    return failures


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.compare.gate``: the same command, usable apart from harness/cli.py."""
    parser = argparse.ArgumentParser(prog="python -m harness.compare.gate", description=__doc__)
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
