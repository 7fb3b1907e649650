"""Planted faults: proof that the parity harness finds a porting bug and says where it is.

Each ``Fault`` is one build-time ``Variant`` of the MAX model (PyTorch is never touched) with the
stage where it must first show. ``run_faults`` runs, per fault, the parity comparison with
isolated inputs (every MAX stage fed PyTorch's input for it): the log-mel of a fixture clip, the
encoder stages, then the decoder stages teacher-forced on the standard prompt and the clip's
true sentence. It stops at the first stage whose metrics break tolerance, so a fault compiles
only the graphs up to where it shows (MAX caches compiled graphs by content, so the unchanged
stages before it cost seconds). A stage whose graph MAX refuses to build, compile or run
(``MaxGraphError``), or that returns the wrong shape, counts as detected there, with the error as
the reason; any other error is a bug of the harness and propagates. A divergent block is bisected
into its sub-modules (``substages.py``), and the float64 arbiter (``arbiter.py``) says which side
is right.

``transcript_changed`` (with ``--transcripts`` only; null otherwise) says whether the faulty
model's greedy transcript of ``short.wav`` differs from the faithful one's; it is null too when
either model has none (a ``MaxGraphError``), and ``transcript_error`` says why. It is decoded by
openai-whisper's own ``transcribe`` through the stage graphs (chained, uncached) rather than the
fused encoder and the cached decoder step, which would cost every fault three more cold compiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from max import graph as max_graph
from whisper.decoding import DecodingOptions, DecodingResult, Inference

from harness.compare import tolerances
from harness.compare.bisect import bisect
from harness.compare.decoder_parity import teacher_tokens
from harness.compare.metrics import Metrics, compare
from harness.compare.tolerances import Tolerances
from harness.errors import HarnessError
from harness.inputs import checkpoints
from harness.inputs.audio import load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.substages import MaxSubStages
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.max_whisper.whisper import MaxDecodingTask, MaxWhisper, transcribe
from harness.paths import FIXTURES
from harness.progress import Notify as Progress
from harness.progress import Progress as Printer
from harness.progress import silent
from harness.reference import tracer
from harness.reference.arbiter import arbitrate
from harness.reference.tracer import Trace, trace_block
from harness.report.files import write_json
from harness.stages import stage_named

AUDIO = FIXTURES / "audio"
CLIP = AUDIO / "short.wav"

MAX_PACKAGE = Path(max_graph.__file__).parent.parent
# What MAX raises for a graph it cannot build (ValueError from op creation and verification,
# IndexError for an axis or index out of range), compile (RuntimeError) or run (ValueError for
# inputs of the wrong shape or dtype, RuntimeError): builtin types, which the harness raises too.
MAX_GRAPH_ERRORS = (ValueError, IndexError, RuntimeError)


class MaxGraphError(Exception):
    """MAX refused to build, compile or run a graph: for a planted fault, a finding."""


@contextmanager
def max_graph_errors() -> Iterator[None]:
    """Raise what MAX itself raised as ``MaxGraphError``; anything else, a harness bug, as is.

    The types alone cannot tell MAX's errors from the harness's, so where it was raised decides.
    """
    try:
        yield
    except MAX_GRAPH_ERRORS as error:
        if not _raised_by_max(error):
            raise
        raise MaxGraphError(_one_line(error)) from error


def _raised_by_max(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is MAX's own code."""
    raised_in = traceback.extract_tb(error.__traceback__)[-1].filename
    return Path(raised_in).is_relative_to(MAX_PACKAGE)


@dataclass(frozen=True)
class Fault:
    """A planted porting bug: the variant that builds it and where parity must first see it."""

    name: str
    variant: Variant
    expected_stage: str | None  # None: nothing may diverge (the control)
    description: str
    expected_sub_stage: str | None = None  # inside a block stage: which sub-module


CONTROL = Fault("none", FAITHFUL, None, "the faithful port: no stage may diverge")

CATALOGUE: tuple[Fault, ...] = (
    Fault(
        "mel_no_log_clamp",
        Variant(mel_log_clamp=False),
        "mel",
        "log-mel not clamped to 8 decades below its peak: silence falls to the 1e-10 floor",
    ),
    Fault(
        "gelu_tanh",
        Variant(gelu_approximate="tanh"),
        "conv1",
        "tanh-approximate GELU (common in other ports) instead of torch's exact erf GELU",
    ),
    Fault(
        "conv2_padding_0",
        Variant(conv2_padding=0),
        "conv2",
        "conv2 without padding: 1499 frames, which cannot take the 1500 positional embeddings",
    ),
    Fault(
        "positional_shift_1",
        Variant(positional_shift=1),
        "conv2",
        "the encoder's positional embedding rolled by one frame",
    ),
    Fault(
        "attention_scale_1_over_d",
        Variant(attention_scale_power=1.0),
        "blocks.0",
        "attention scores scaled by 1/d instead of 1/sqrt(d)",
        "attn",
    ),
    Fault(
        "heads_not_transposed",
        Variant(heads_transposed=False),
        "blocks.0",
        "heads split by a reshape alone, without the transpose: frames and heads mixed",
        "attn",
    ),
    Fault(
        "softmax_over_queries",
        Variant(softmax_over_queries=True),
        "blocks.0",
        "attention softmax over the query axis instead of the key axis",
        "attn",
    ),
    Fault(
        "key_bias",
        Variant(key_bias=True),
        None,
        "a bias on the key projection, which whisper's has not (the value's bias borrowed). "
        "Undetectable, rightly: it adds q·b to every score of a query's row, and softmax is "
        "invariant to that shift, so the output changes by float32 round-off only",
    ),
    Fault(
        "layer_norm_eps_1e-6",
        Variant(layer_norm_eps=1e-6),
        "blocks.0",
        "layer norm epsilon 1e-6 (a common default) instead of torch's 1e-5",
        "attn_ln",
    ),
    Fault(
        "mlp_no_residual",
        Variant(mlp_residual=False),
        "blocks.0",
        "encoder block returns its MLP's output without adding the residual stream",
        "residual",
    ),
    Fault(
        "no_ln_post",
        Variant(ln_post=False),
        "ln_post",
        "the encoder's final layer norm forgotten",
    ),
    Fault(
        "no_causal_mask",
        Variant(causal_mask=False),
        "decoder.blocks.0",
        "decoder self-attention without its causal mask: tokens see the future",
        "attn",
    ),
    Fault(
        "cross_kv_other_block",
        Variant(cross_kv_from_block=1),
        "decoder.blocks.0",
        "decoder block i cross-attends with block i+1's keys and values",
        "cross_attn",
    ),
)


@dataclass(frozen=True)
class Reference:
    """PyTorch's side of every comparison, computed once and shared by all the faults."""

    audio: np.ndarray  # the clip padded to the 30 s window
    mel: np.ndarray  # whisper's log-mel of it, (n_mels, frames)
    encoder: Trace
    decoder: Trace


def reference(checkpoint: Checkpoint, clip: Path = CLIP) -> Reference:
    """Trace openai-whisper on ``clip``: its log-mel, encoder, and decoder on the true sentence."""
    audio = whisper.pad_or_trim(load_audio(clip))
    mel = whisper.log_mel_spectrogram(audio, checkpoint.dims.n_mels).numpy()
    encoder = tracer.trace_encoder(checkpoint.model.encoder, mel[None])
    text = json.loads((clip.parent / "transcripts.json").read_text())[clip.name]
    tokens = teacher_tokens(checkpoint, text)
    decoder = tracer.trace_decoder(checkpoint.model.decoder, tokens, encoder["ln_post"])
    return Reference(audio, mel, encoder, decoder)


@dataclass(frozen=True)
class Check:
    """One isolated stage comparison: PyTorch's inputs and output, and how MAX computes it."""

    stage: str
    tolerance_kind: str
    inputs: tuple[np.ndarray, ...]  # as the arbiter takes them
    expected: np.ndarray
    run: Callable[[], np.ndarray]


def checks(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, ref: Reference
) -> Iterator[Check]:
    """Every stage in pipeline order, MAX fed PyTorch's input: mel, encoder, decoder.

    The log-mel is compared as (frames, n_mels), so its cosine per frame is per row.
    """
    mel = MaxLogMel(checkpoint.dims.n_mels, engine, variant)
    yield Check("mel", "mel", (ref.audio,), ref.mel.T, lambda: mel(ref.audio).T)
    state = checkpoint.model.state_dict()
    audio_encoder = MaxAudioEncoder(checkpoint.dims, state, engine, variant)
    previous = "mel"
    for stage in audio_encoder.stages():
        x = ref.encoder[previous]
        yield Check(
            stage.name,
            "isolated",
            (x,),
            ref.encoder[stage.name],
            lambda stage=stage, x=x: audio_encoder.run_stage(stage, x),
        )
        previous = stage.name
    text_decoder = MaxTextDecoder(checkpoint.dims, state, engine, variant)
    xa, previous = ref.encoder["ln_post"], "tokens"
    for stage in text_decoder.stages():
        x = ref.decoder[previous]
        inputs = (x, xa) if stage.kind == "block" else (x,)
        yield Check(
            stage.name,
            "isolated",
            inputs,
            ref.decoder[stage.name],
            lambda stage=stage, x=x: text_decoder.run_stage(stage, x, xa),
        )
        previous = stage.name


def localise(
    checkpoint: Checkpoint,
    engine: Engine,
    variant: Variant,
    ref: Reference,
    limits: Tolerances,
    progress: Progress = silent,
) -> dict[str, Any]:
    """The first stage where ``variant`` breaks tolerance, why, and (in a block) which sub-stage.

    Stops there: later stages would only be compiled to confirm what is already known. When no
    stage breaks tolerance, the metrics are those of the stage closest to its rel_l2 limit.
    """
    closest: tuple[float, str, Metrics] = (-1.0, "", {})
    for check in checks(checkpoint, engine, variant, ref):
        progress(f"stage {check.stage}")
        try:
            with max_graph_errors():
                output = check.run()
        except MaxGraphError as error:
            return _found(check.stage, str(error))
        if output.shape != check.expected.shape:
            shapes = f"MAX {output.shape}, PyTorch {check.expected.shape}"
            return _found(check.stage, f"output shape mismatch: {shapes}")
        metrics = compare(output, check.expected)
        failures = limits.violations(metrics, check.tolerance_kind)
        if failures:
            found = _found(check.stage, "; ".join(failures), metrics)
            limit = limits.limit(check.tolerance_kind, "rel_l2")
            found["arbiter"] = arbitrate(
                checkpoint.model, check.stage, check.inputs, output, check.expected, limit
            )
            if ".blocks." in f".{check.stage}":
                progress(f"bisecting {check.stage}")
                found |= _bisect(checkpoint, engine, variant, check, limits)
            return found
        margin = metrics["rel_l2"] / limits.limit(check.tolerance_kind, "rel_l2")
        closest = max(closest, (margin, check.stage, metrics), key=lambda c: c[0])
    margin, stage, metrics = closest
    reason = f"every stage within tolerance; closest {stage}, rel_l2 at {margin:.2g} x its limit"
    return _found(None, reason, metrics)


def _found(stage: str | None, reason: str, metrics: Metrics | None = None) -> dict[str, Any]:
    return {
        "localized_stage": stage,
        "reason": reason,
        "metrics": metrics,
        "arbiter": None,
        "sub_stage": None,
        "sub_stage_metrics": None,
    }


def _bisect(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, check: Check, limits: Tolerances
) -> dict[str, Any]:
    """Which sub-module of the block ``check.stage`` diverges (see ``compare.bisect``)."""
    model, stage = checkpoint.model, stage_named(checkpoint.dims, check.stage)
    half = model.decoder if stage.side == "decoder" else model.encoder
    xa, mask = (check.inputs[1], model.decoder.mask) if stage.reads_audio else (None, None)
    capture = trace_block(half.blocks[stage.block], check.inputs[0], xa, mask)
    candidate = MaxSubStages(checkpoint.dims, model.state_dict(), engine, variant)
    sub_stage, metrics = bisect(candidate, stage, capture, xa, limits)
    return {"sub_stage": sub_stage, "sub_stage_metrics": metrics}


def _one_line(error: Exception) -> str:
    """The error as one line: MAX's graph errors span many, the diagnosis in the middle."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:400]


def run_faults(
    checkpoint: Checkpoint,
    engine: Engine,
    faults: Sequence[Fault] = CATALOGUE,
    progress: Progress = silent,
    transcripts: bool = False,
) -> list[dict[str, Any]]:
    """Localise each fault; one result per fault, in order (see the module docstring)."""
    limits = tolerances.load(engine.dtype.name)
    progress("PyTorch reference: log-mel, encoder, teacher-forced decoder")
    ref = reference(checkpoint)
    faithful = _transcript(checkpoint, engine, FAITHFUL, progress) if transcripts else None
    results = []
    for fault in faults:
        found = localise(
            checkpoint,
            engine,
            fault.variant,
            ref,
            limits,
            lambda m, f=fault: progress(f"{f.name}: {m}"),
        )
        result = {
            "name": fault.name,
            "description": fault.description,
            "expected_stage": fault.expected_stage,
            "expected_sub_stage": fault.expected_sub_stage,
            "detected": found["localized_stage"] is not None,
            "localized_correctly": (found["localized_stage"], found["sub_stage"])
            == (fault.expected_stage, fault.expected_sub_stage),
            **found,
            "transcript_changed": None,
            "transcript": None,
            "transcript_error": None,
        }
        if faithful is not None:
            faulty = _transcript(checkpoint, engine, fault.variant, progress)
            result |= _transcript_fields(faithful, faulty)
        results.append(result)
    return results


def _transcript_fields(faithful: Transcribed, faulty: Transcribed) -> dict[str, Any]:
    """The faulty transcript and whether it changed: unknown (None) when either model has none,
    since two failed runs are no evidence of the same text; the error says which failed."""
    error = faulty.error
    if error is None and faithful.error is not None:
        error = f"faithful model: {faithful.error}"
    return {
        "transcript_changed": None if error else faulty.text != faithful.text,
        "transcript": faulty.text,
        "transcript_error": error,
    }


# -- greedy transcripts through the stage graphs ------------------------------------------------


class StageWhisper(MaxWhisper):
    """``MaxWhisper`` computed by the parity stage graphs, chained and uncached.

    Each decoding step runs the whole token sequence through the decoder stages; only the first
    step's logits are computed at every position (decoding reads the start-of-transcript one).
    """

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.float().numpy()
        for stage in self.audio_encoder.stages():
            x = self.audio_encoder.run_stage(stage, x)
        return torch.from_numpy(x)

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor, last_only=False):
        x, xa = tokens.numpy(), audio_features.numpy()
        for stage in self.text_decoder.stages():
            if stage.name == "decoder.ln" and last_only:
                x = x[:, -1:]
            x = self.text_decoder.run_stage(stage, x, xa)
        return torch.from_numpy(x)

    @torch.no_grad()
    def decode(self, mel: torch.Tensor, options: DecodingOptions) -> DecodingResult:
        """One 30 s window (n_mels, frames), as ``transcribe`` asks for it."""
        task = MaxDecodingTask(self, options)
        task.inference = _StageInference(self)
        return task.run(mel[None])[0]


class _StageInference(Inference):
    """openai-whisper's ``Inference`` without a cache: every call recomputes the sequence."""

    def __init__(self, model: StageWhisper) -> None:
        self.model, self.calls = model, 0

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model.logits(tokens, audio_features, last_only=self.calls > 1)

    def rearrange_kv_cache(self, source_indices: list[int]) -> None:
        """Nothing cached, nothing to reorder."""


@dataclass(frozen=True)
class Transcribed:
    """The greedy transcript of ``CLIP``, or (``text`` None) the MAX error that prevented it."""

    text: str | None
    error: str | None = None


def _transcript(
    checkpoint: Checkpoint, engine: Engine, variant: Variant, progress: Progress
) -> Transcribed:
    """Decode ``CLIP``; a graph MAX refuses is recorded, any other error propagates."""
    progress(f"transcribing {CLIP.name}")
    audio = load_audio(CLIP)
    try:
        with max_graph_errors():
            return Transcribed(transcribe(StageWhisper(checkpoint, engine, variant), audio).text)
    except MaxGraphError as error:
        return Transcribed(None, str(error))


# -- command line -------------------------------------------------------------------------------


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
    printer = Printer()
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
