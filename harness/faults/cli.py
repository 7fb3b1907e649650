"""``python -m harness faults``: plant each catalogued fault, localise it, print a table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.faults.catalogue import CATALOGUE, CONTROL, Fault
from harness.faults.findings import run_faults
from harness.inputs import checkpoints
from harness.max_whisper.engine import DTYPES, Engine
from harness.progress import Progress
from harness.report.files import write_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``python -m harness faults``: localise every catalogued fault, print a table."""
    parser = subparsers.add_parser("faults", help="plant each catalogued fault and localise it")
    parser.add_argument("--model", default="synthetic:tiny", help="as for report")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--json", type=Path, help='write {"faults": [...]} to this file')
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run this fault only (repeatable)"
    )
    parser.add_argument(
        "--transcripts",
        action="store_true",
        help="also transcribe short.wav greedily with each faulty model (slower)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the control is clean and every fault is localised where expected.

    Bad input (model, fault name, output folder) is refused before the first compile.
    """
    faults = selected(args.only)
    if args.json and not args.json.parent.is_dir():
        raise HarnessError(f"{args.json.parent}: no such folder for --json")
    checkpoint = checkpoints.load(args.model)
    printer = Progress()
    engine = Engine(args.device, DTYPES["float32"], on_compile=printer.compiling)
    results = run_faults(checkpoint, engine, faults, printer, args.transcripts)
    printer.done()
    print(table(results))
    if args.json:
        write_json({"model": args.model, "faults": results}, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if all(r["localized_correctly"] for r in results) else 1


def selected(names: Sequence[str] | None) -> list[Fault]:
    """The control and the catalogue, or only the faults ``names``; an unknown name is an error."""
    faults = [CONTROL, *CATALOGUE]
    unknown = sorted(set(names or ()) - {f.name for f in faults})
    if unknown:
        known = ", ".join(f.name for f in faults)
        raise HarnessError(f"unknown fault(s) {', '.join(unknown)}; known: {known}")
    return [f for f in faults if not names or f.name in names]


def table(results: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: one fault per row, and why it was (not) caught."""
    header = ("fault", "expected", "localized", "sub_stage", "detected", "transcript", "reason")
    rows = [header] + [
        (
            r["name"],
            _cell(r["expected_stage"], r["expected_sub_stage"]),
            r["localized_stage"] or "-",
            r["sub_stage"] or "-",
            "yes" if r["detected"] else "no",
            _transcript_cell(r),
            r["reason"][:60],
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _cell(stage: str | None, sub_stage: str | None) -> str:
    return "-" if stage is None else f"{stage}/{sub_stage}" if sub_stage else stage


def _transcript_cell(result: dict[str, Any]) -> str:
    if result["transcript_error"]:
        return "error"
    return {None: "-", True: "changed", False: "same"}[result["transcript_changed"]]
