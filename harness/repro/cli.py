"""``python -m harness repro``: one stage, faithful or with a planted fault, standalone."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.errors import HarnessError
from harness.faults.catalogue import CATALOGUE, CONTROL, MAX_BUGS, Fault
from harness.faults.reference_trace import trace_reference
from harness.inputs import checkpoints
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import DTYPES, Engine
from harness.progress import Progress
from harness.repro.handover import hand_over
from harness.stages import MEL, all_stages

FAULTS = (CONTROL, *CATALOGUE, *MAX_BUGS)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "repro", help="write one stage as a standalone MAX reproduction (only max and numpy)"
    )
    parser.add_argument("--model", default="synthetic:tiny", help="as for report")
    parser.add_argument("--stage", required=True, help="mel, conv1, blocks.0, decoder.blocks.0 ...")
    parser.add_argument(
        "--fault",
        default=CONTROL.name,
        help=f"a planted fault (see `faults`) or {', '.join(f.name for f in MAX_BUGS)}; "
        "default: none, the faithful port",
    )
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced)")
    parser.add_argument(
        "--no-minimise",
        dest="minimise",
        action="store_false",
        help="skip shrinking a failing block to its smallest failing piece (minimal/)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the folder and print what its repro.py printed; exit 0 once it is written."""
    fault = fault_named(args.fault)
    check_writable(args.out)
    checkpoint = checkpoints.load(args.model)
    check_stage(checkpoint, args.stage)
    printer = Progress()
    engine = Engine("cpu", DTYPES["float32"], on_compile=printer.compiling)
    printer("PyTorch reference: log-mel, encoder, teacher-forced decoder")
    ref = trace_reference(checkpoint)
    done = hand_over(
        checkpoint, engine, fault, ref, args.stage, args.out, command(args), printer, args.minimise
    )
    printer.done()
    print(done.stage.output.rstrip())
    print(f"wrote {args.out}/ (repro.py exits {done.stage.returncode})")
    if done.minimal:
        print(f"smallest failing piece: {done.minimal.describe()}")
        print(done.minimal_outcome.output.rstrip())
        print(f"wrote {args.out}/minimal/ (repro.py exits {done.minimal_outcome.returncode})")
    return 0


def fault_named(name: str) -> Fault:
    for fault in FAULTS:
        if fault.name == name:
            return fault
    raise HarnessError(f"unknown fault {name!r}; known: {', '.join(f.name for f in FAULTS)}")


def check_writable(out: Path) -> None:
    """Refuse, before any work, a folder that cannot be written (its parent must exist)."""
    parent = out.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise HarnessError(f"--out {out}: {parent} is not a writable folder")
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out}: exists and is not a folder")


def check_stage(checkpoint: Checkpoint, stage: str) -> None:
    names = [MEL, *(s.name for s in all_stages(checkpoint.dims))]
    if stage not in names:
        raise HarnessError(f"unknown stage {stage!r}; this checkpoint has: {', '.join(names)}")


def command(args: argparse.Namespace) -> str:
    """The command line that makes this folder, for its header."""
    planted = f" --fault {args.fault}" if args.fault != CONTROL.name else ""
    stage = f"--model {args.model} --stage {args.stage}{planted}"
    return f"python -m harness repro {stage} --out {args.out}"
