"""Speed, side by side: PyTorch, MAX and CTranslate2 on the same checkpoint, audio and threads.

Every figure is the median of several timed runs after an untimed warm-up, and the backends'
runs take turns (PyTorch, MAX, CTranslate2 float32, CTranslate2 int8, PyTorch, ...) so that a
noisy neighbour on a shared machine slows all alike, each after a pause (``SETTLE_S``) so that
no engine pays for the one before it. Each engine runs in a process of its own, stopped between
its turns (``engine_process`` says why), and this process must not have run MAX yet. The runs
themselves are kept in the document: the spread is part of the result. Ratios are given from
every MAX mode to every peer. What each engine runs for each measure is in ``backends``.

* ``encoder_ms``: one 30 s window, batch 1, mel in, audio features out.
* ``decode_ms_per_token``: greedy decoding with the KV cache, a fixed number of tokens after the
  prompt, from the same audio features. PyTorch and MAX run openai-whisper's ``Inference`` loop
  (argmax in PyTorch for both), the prompt's pass untimed; CTranslate2 its own ``generate``
  with the end of text suppressed, timed as the marginal cost per token after an untimed
  one-token call (``ctranslate2_peer``).
* ``end_to_end_rtf``: audio file to text over the clip's duration: ``whisper.transcribe`` for
  PyTorch and MAX, faster-whisper's ``transcribe`` for CTranslate2, greedy at temperature 0.
* ``batched_rtf``: long audio (``long_audio``, ~100 s) over its duration, its 30 s chunks
  encoded and decoded as one batch (``pipeline.batched``; faster-whisper's
  ``BatchedInferencePipeline`` on the same chunks for CTranslate2), and in ``batched`` what
  each engine wrote: tokens, equality to PyTorch's, word error rate against the true text.
* ``compile_s``: MAX compiling the fused encoder graph with a warm disk cache, and, on request,
  with an empty one (``cold``, a minute or more on 2 cores, so ``None`` unless asked for).
* ``load_s``: PyTorch building the model from the checkpoint file, MAX binding the weights of its
  already compiled graphs, CTranslate2 loading its folder; reported apart from execution.

With ``dtype`` bfloat16 PyTorch runs under ``torch.autocast`` (its CPU/GPU bfloat16 path) and MAX
with bfloat16 weights and activations; CTranslate2 is compared with float32 models on the CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import whisper
from whisper.audio import SAMPLE_RATE

from harness.child_process import child_env
from harness.compare.transcripts import first_difference, transcription_language
from harness.compare.wer import word_error_rate
from harness.inputs import checkpoints
from harness.inputs.audio import audio_duration_s, load_audio
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.whisper import MaxWhisper
from harness.paths import FIXTURES
from harness.peers import ctranslate2 as ctranslate2_peer
from harness.peers.ctranslate2 import CTranslate2Whisper
from harness.pipeline.batched import BATCH_SIZE, chunk_bounds
from harness.pipeline.transcribe import Transcript
from harness.progress import Notify, silent
from harness.speed import first_transcript, machine
from harness.speed.backends import (
    Backend,
    TorchWhisper,
    transcription_prompt,
)
from harness.speed.engine_process import EngineProcess
from harness.speed.first_transcript import harness_command
from harness.speed.long_audio import long_audio

# 6 s of LibriVox: a clip a person transcribes with one command
FIRST_TRANSCRIPT_CLIP = FIXTURES / "speech" / "librivox_0920.wav"

# Idle time before each engine's turn. MAX's worker threads keep spinning after a graph returns:
# in the 100 ms after a MAX decoding run the process burnt ~95 ms of CPU, ~14 ms after a 50 ms
# pause, ~8 ms (the idle level) after 100 ms (MAX 26.7, 2 cores). CTranslate2's next call, a
# 12-token generate on tiny.en, took ~340 ms right after MAX and ~215 ms after a 0.5 s pause.
# Without the pause the engine after MAX is slowed by MAX's spinning, which inflated the first of
# CTranslate2's two decoding calls and so shrank its marginal time per token.
SETTLE_S = 0.2
# Where each engine was timed, in the report's words (engine_process.py says why).
TIMING_PROCESS = "each engine in a process of its own, stopped between its turns"


@dataclass(frozen=True)
class Plan:
    """What to time: the clip for the end-to-end run, how much, and against which peers."""

    clip: Path
    runs: int = 5
    tokens: int = 48  # decoded per run, after the prompt
    cold_compile: bool = False  # a minute or more on 2 cores
    first_clip: Path = FIRST_TRANSCRIPT_CLIP  # for time to first transcript; None: not timed
    batched: bool = True  # time long audio decoded as one batch


def measure(
    checkpoint: Checkpoint,
    candidate: MaxWhisper,
    plan: Plan,
    progress: Notify = silent,
    peers: Sequence[CTranslate2Whisper] = (),
    modes: Sequence[MaxWhisper] = (),
) -> dict[str, Any]:
    """The ``speed`` section of ``parity.json``: PyTorch, ``candidate`` (MAX), MAX's other
    weights ``modes`` and ``peers`` (CTranslate2 at each compute type), on one checkpoint."""
    engine = candidate.engine
    reference = TorchWhisper(checkpoint.model, engine.device, engine.dtype.name)
    names = ["torch", *(m.name for m in (candidate, *modes)), *(p.name for p in peers)]
    try:
        with contextlib.ExitStack() as stack:
            progress("speed: each engine in a process of its own")
            backends = [
                stack.enter_context(
                    EngineProcess(checkpoint.name, engine.device, engine.dtype.name, name)
                ).backend
                for name in names
            ]
            timed = {
                **_execution(checkpoint, reference, backends, plan, progress),
                **_batched(backends, plan, progress),
            }
        return {
            "machine": machine.describe(),
            "threads": torch.get_num_threads(),
            "runs": plan.runs,
            "engines": {b.name: b.label for b in backends},
            "timing_process": TIMING_PROCESS,
            **timed,
            **_first_transcripts(checkpoint, candidate, modes, peers, plan, progress),
            "idle_cpu_share": machine.idle_cpu_share(),  # the timer's, before parity runs MAX
            "compile_s": {
                "cold": cold_compile_seconds(checkpoint, engine) if plan.cold_compile else None,
                "warm": encoder_compile_seconds(candidate.audio_encoder),
            },
            "load_s": {
                "torch": load_seconds(checkpoint),
                "max": candidate_load_seconds(checkpoint, engine),
                **{peer.name: peer_load_seconds(peer) for peer in peers},
            },
        }
    finally:
        checkpoint.model.cpu()  # the parity stages run the reference on the CPU


def _execution(
    checkpoint: Checkpoint,
    reference: TorchWhisper,
    backends: list[Backend],
    plan: Plan,
    progress: Notify,
) -> dict[str, Any]:
    audio = load_audio(plan.clip)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), checkpoint.dims.n_mels)[None]
    progress("speed: encoder")
    encode = {b.name: partial(b.encode_seconds, mel) for b in backends}
    encoder = side_by_side(encode, plan.runs, 1e3)
    features = reference.encode(mel)
    prompt = transcription_prompt(checkpoint)
    progress(f"speed: decoding {plan.tokens} tokens")
    decode = side_by_side(
        {b.name: partial(b.decode_seconds, prompt, features, plan.tokens) for b in backends},
        plan.runs,
        scale=1e3,
    )
    progress(f"speed: transcribing {plan.clip.name}")
    duration = len(audio) / SAMPLE_RATE
    work = {b.name: transcript_work(b.transcribe(plan.clip)[1]) for b in backends}  # the warm-up
    end_to_end = side_by_side(
        {b.name: partial(_seconds, b.transcribe, plan.clip) for b in backends},
        plan.runs,
        1 / duration,
        warm=False,
    )
    return {
        "encoder_ms": encoder,
        "decode_ms_per_token": decode,
        "decode_tokens": plan.tokens,
        "end_to_end_rtf": end_to_end,
        "end_to_end_clip": {"name": plan.clip.name, "seconds": round(duration, 3)},
        "end_to_end_work": work,
    }


def _seconds(call: Callable[..., tuple[float, Any]], *args: Any) -> float:
    return call(*args)[0]


def _batched(backends: list[Backend], plan: Plan, progress: Notify) -> dict[str, Any]:
    """``batched_rtf`` and ``batched``: the long audio as one batch of 30 s chunks, each
    engine's first (untimed) transcript scored against PyTorch's and the true text."""
    if not plan.batched:
        return {}
    long = long_audio()
    bounds = chunk_bounds(long.samples)
    progress(f"speed: {long.seconds:.0f} s of audio as {len(bounds)} chunks in one batch")
    written = {b.name: b.transcribe_batched(long.samples)[1] for b in backends}  # the warm-up
    calls = {b.name: partial(_seconds, b.transcribe_batched, long.samples) for b in backends}
    timed = side_by_side(calls, plan.runs, 1 / long.seconds, warm=False)
    reference = written[backends[0].name].tokens
    return {
        "batched_rtf": timed,
        "batched": {
            "seconds": round(long.seconds, 3),
            "clips": [clip.name for clip in long.clips],
            "chunks_s": [[start / SAMPLE_RATE, end / SAMPLE_RATE] for start, end in bounds],
            "batch_size": BATCH_SIZE,
            "engines": {
                name: {
                    "tokens": len(transcript.tokens),
                    "tokens_equal_to_torch": transcript.tokens == reference,
                    "first_difference": first_difference(transcript.tokens, reference),
                    "wer": word_error_rate(transcript.text, long.text),
                }
                for name, transcript in written.items()
            },
        },
    }


def transcript_work(transcript: Transcript) -> dict[str, int]:
    """How much each engine's windowing did: 30 s windows encoded (one per distinct seek) and
    tokens kept. openai-whisper and faster-whisper seek alike, but where a window's last segment
    ends decides whether the tail is a window of its own, so engines can differ in work."""
    windows = len({segment["seek"] for segment in transcript.segments})
    return {"windows": windows, "tokens": len(transcript.tokens)}


def _first_transcripts(
    checkpoint: Checkpoint,
    candidate: MaxWhisper,
    modes: Sequence[MaxWhisper],
    peers: Sequence[CTranslate2Whisper],
    plan: Plan,
    progress: Notify,
) -> dict[str, Any]:
    """``first_transcript_s``: a new process per run, from its start to its transcript, warm
    caches, the engines in turn: ``python -m harness transcribe`` for PyTorch and each MAX
    weights mode, a faster-whisper script for CTranslate2."""
    if plan.first_clip is None:
        return {}
    engine, dtype = candidate.engine, candidate.engine.dtype.name
    clip, language = plan.first_clip, transcription_language(checkpoint)
    chosen = ["--language", language] if language else []
    commands = {
        "torch": [*harness_command("torch", checkpoint.name, clip), *chosen],
        **{
            model.name: [
                *harness_command("max", checkpoint.name, clip, engine.device, dtype),
                *chosen,
                *("--weights", model.weights),
            ]
            for model in (candidate, *modes)
        },
    }
    for peer in peers:
        commands[peer.name] = ctranslate2_peer.first_transcript_command(peer, clip, language)
    progress(f"speed: time to first transcript of {clip.name}, a new process per run")
    timings = first_transcript.measure(commands, runs=plan.runs)
    return {
        "first_transcript_s": summary({name: t.runs for name, t in timings.items()}),
        "first_transcript_clip": {"name": clip.name, "seconds": audio_duration_s(load_audio(clip))},
    }


def side_by_side(
    backends: dict[str, Callable[[], float]],
    runs: int,
    scale: float = 1.0,
    warm: bool = True,
    settle: float = SETTLE_S,
) -> dict[str, Any]:
    """Medians and runs of every backend, in turns, after one untimed call of each (``warm``;
    False when the caller has made that call). Each call returns the seconds it took, timed
    where its engine runs, and starts after ``settle`` seconds idle, so that it does not share
    the cores with the previous engine's spinning threads.
    """
    for function in backends.values() if warm else ():
        function()
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(runs):
        for name, function in backends.items():
            time.sleep(settle)
            times[name].append(function() * scale)
    return summary(times)


def summary(times: dict[str, list[float]]) -> dict[str, Any]:
    """``median`` and ``runs`` per backend; ``speedup[m][p]``: how many times faster MAX mode
    ``m`` is than peer ``p`` (p's median over m's), for every MAX mode and every other engine.
    Runs are kept to 4 significant digits and the medians taken of those, so each median lies
    within its runs as written.

    ``speedup_runs[m][p]``: the same ratio round by round (run i of p over run i of m). The
    engines take turns, so a round's runs share one moment of a shared machine; the range of
    these ratios says whether a lead is larger than the noise, which medians alone hide (the
    same encoder ratio read 0.97x and 1.12x in two reports an hour apart).
    """
    runs = {name: [float(f"{t:.4g}") for t in measured] for name, measured in times.items()}
    medians = {name: statistics.median(measured) for name, measured in runs.items()}
    modes = [name for name in medians if name.startswith("max")]
    peers = [name for name in medians if not name.startswith("max")]
    return {
        "median": medians,
        "runs": runs,
        "speedup": {m: {p: medians[p] / medians[m] for p in peers} for m in modes},
        "speedup_runs": {m: {p: _round_ratios(runs[p], runs[m]) for p in peers} for m in modes},
    }


def _round_ratios(peer: list[float], mine: list[float]) -> list[float]:
    return [p / m for p, m in zip(peer, mine, strict=True)]


def encoder_compile_seconds(encoder: MaxAudioEncoder) -> float:
    """Compiling the fused encoder graph in a fresh session (same device and dtype) with it in
    MAX's disk cache: the second of two compiles. The encoder that ran may have come from the
    harness's store, or been compiled inside a module of several graphs, so the graph alone can
    be missing from MAX's cache: one base report timed a full compile (68.6 s) as the warm one."""
    for _ in range(2):  # the first puts it in MAX's cache; a compile rewrites its graph
        graph = encoder.graph("encoder")
        session = Engine(encoder.engine.device, encoder.engine.dtype).session
        start = time.perf_counter()
        session.compile(graph)
    return time.perf_counter() - start


def cold_compile_seconds(checkpoint: Checkpoint, engine: Engine) -> float:
    """Compiling the fused encoder with an empty MAX cache, in a child process (the cache root,
    ``MODULAR_DERIVED_PATH``, is read once per process)."""
    with tempfile.TemporaryDirectory(prefix="max-cold-") as cache:
        env = child_env(MODULAR_DERIVED_PATH=cache)
        command = [
            sys.executable,
            "-m",
            "harness.speed.measure",
            str(checkpoint.path),
            engine.device,
            engine.dtype.name,
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def load_seconds(checkpoint: Checkpoint) -> float:
    """openai-whisper's model built from the file anew, as ``whisper.load_model`` builds it."""
    start = time.perf_counter()
    _ = checkpoints.load(str(checkpoint.path)).model
    return time.perf_counter() - start


def peer_load_seconds(peer: CTranslate2Whisper) -> float:
    """CTranslate2 reading its model folder (and quantising it, for int8)."""
    start = time.perf_counter()
    _ = replace(peer).model  # a new instance: its model is not loaded yet
    return time.perf_counter() - start


def candidate_load_seconds(checkpoint: Checkpoint, engine: Engine) -> float:
    """A new MAX model binding the file's weights anew to the graphs ``engine`` has compiled
    (the untimed load before it compiles them, or reads them from the store)."""
    MaxWhisper(checkpoint, engine).load()
    start = time.perf_counter()
    MaxWhisper(checkpoints.load(str(checkpoint.path)), engine).load()
    return time.perf_counter() - start


def _compile_encoder(path: str, device: str, dtype: str) -> float:
    candidate = MaxWhisper(checkpoints.load(path), Engine(device, DTYPES[dtype]))
    return encoder_compile_seconds(candidate.audio_encoder)


if __name__ == "__main__":  # the child of cold_compile_seconds
    print(_compile_encoder(*sys.argv[1:4]))
