"""Command line: ``report``, and the other subcommands as they land.

User mistakes (bad checkpoint, bad audio, bad arguments) print one ``error:`` line and exit 2;
anything else is a bug in the harness and keeps its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from harness import checkpoints, report
from harness.errors import HarnessError
from harness.progress import Progress

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    run = commands.add_parser("report", help="compare MAX with PyTorch and write a parity report")
    _model_arguments(run)
    run.add_argument("--out", type=Path, help="report folder (default reports/<model>-<device>-<dtype>)")
    run.set_defaults(run=_report)
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="name (tiny … large-v3, turbo, .en), checkpoint path, synthetic:<name> or "
        "fixture:<name>; default: tiny if cached, else synthetic:tiny",
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")


def _report(args: argparse.Namespace) -> int:
    progress = Progress()
    spec = args.model or report.default_model()
    if not args.model and spec.startswith("synthetic:"):
        _banner(f"no pretrained 'tiny' checkpoint is cached: using {spec} (random weights)")
    checkpoint = checkpoints.load(spec)
    out = args.out or REPORTS / f"{_slug(spec)}-{args.device}-{args.dtype}"
    document = report.build(checkpoint, args.device, args.dtype, progress=progress)
    report.write(document, out)
    progress.done()
    print(f"wrote {out / 'report.md'} and {out / 'parity.json'}")
    return 0


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(spec).stem if spec.endswith(".pt") else spec)


def _banner(message: str) -> None:
    line = "=" * len(message)
    print(f"{line}\n{message}\n{line}", file=sys.stderr)
