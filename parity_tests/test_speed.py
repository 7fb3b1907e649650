"""Speed: how the side-by-side timer computes its figures, and pytest-benchmark benchmarks.

The benchmarks are skipped by default (``--benchmark-skip`` in pyproject.toml); run them with
``make bench`` (pretrained tiny.en, CPU, float32; ``BENCH_MODEL``/``BENCH_DTYPE`` to change):
PyTorch, MAX and, in float32, CTranslate2 float32 and int8 (faster-whisper's engine) on the same
weights. The report's own speed section (``parity.json["speed"]``) is checked in test_cli.py.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from itertools import count

import pytest
import torch
import whisper

from harness.inputs.audio import load_audio
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.inference import MaxInference
from harness.max_whisper.whisper import MaxWhisper
from harness.peers import ctranslate2 as ctranslate2_peer
from harness.report.build import DEFAULT_AUDIO
from harness.report.speed_section import speed_section
from harness.speed import machine
from harness.speed.backends import TorchWhisper, decode_seconds, transcription_prompt
from harness.speed.measure import side_by_side

BENCH_MODEL = os.environ.get("BENCH_MODEL", "tiny.en")
BENCH_DTYPE = os.environ.get("BENCH_DTYPE", "float32")
TOKENS = 32


def test_side_by_side_alternates_the_backends_and_reports_medians():
    calls: list[str] = []
    seconds = count(1)

    def backend(name: str) -> Callable[[], float]:
        def run() -> float:
            calls.append(name)
            return float(next(seconds))  # the time the callable says it took

        return run

    names = ("torch", "max", "ct2-int8")
    backends = {name: backend(name) for name in names}
    result = side_by_side(backends, runs=3, scale=10, timed_inside=True, settle=0)
    assert calls == list(names) * 4  # one untimed warm-up each, then in turns
    assert result["runs"] == {
        "torch": [40, 70, 100],
        "max": [50, 80, 110],
        "ct2-int8": [60, 90, 120],
    }
    assert result["median"] == {"torch": 70, "max": 80, "ct2-int8": 90}
    # every MAX mode against every peer: the peer's median over MAX's
    assert result["speedup"] == {"max": {"torch": 70 / 80, "ct2-int8": 90 / 80}}
    # and round by round: run i of the peer over run i of MAX
    assert result["speedup_runs"] == {
        "max": {"torch": [40 / 50, 70 / 80, 100 / 110], "ct2-int8": [60 / 50, 90 / 80, 120 / 110]}
    }


def test_every_timed_call_starts_after_the_pause():
    """MAX's threads spin on after a graph returns; the next engine must not share the cores."""
    idle: list[float] = []
    last = [time.perf_counter()]

    def run() -> None:
        idle.append(time.perf_counter() - last[0])
        busy_until = time.perf_counter() + 0.002
        while time.perf_counter() < busy_until:  # a call that keeps the CPU busy
            pass
        last[0] = time.perf_counter()

    side_by_side({"torch": run, "max": run}, runs=2, warm=False, settle=0.05)
    assert len(idle) == 4 and min(idle) >= 0.05


def test_the_machine_is_written_beside_the_timings():
    """Ratios hold for one kind of CPU only, so every speed section says which one it ran on."""
    described = machine.describe()
    assert described["cpus"] == len(os.sched_getaffinity(0))
    assert described["date"] == datetime.date.today().isoformat()
    assert set(described["caches"]) <= {"L1", "L2", "L3", "L4"}
    assert described["memory_gib"] >= 1
    line = next(b for b in speed_section({"machine": described}).bullets if "Machine" in b)
    assert line.startswith(f"Machine: {described['cpu']}, {described['cpus']} CPUs")
    assert line.endswith(f"measured {described['date']}")


# -- benchmarks (make bench) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(load_checkpoint):
    checkpoint = load_checkpoint(BENCH_MODEL)
    engine = Engine("cpu", DTYPES[BENCH_DTYPE])
    candidate = MaxWhisper(checkpoint, engine)
    candidate.load()
    reference = TorchWhisper(checkpoint.model, "cpu", BENCH_DTYPE)
    audio = whisper.pad_or_trim(load_audio(DEFAULT_AUDIO))
    mel = whisper.log_mel_spectrogram(audio, checkpoint.dims.n_mels)[None]
    features = reference.encode(mel)
    prompt = transcription_prompt(checkpoint)
    return candidate, reference, mel, features, prompt


def _pedantic(benchmark, function: Callable[[], object]) -> None:
    benchmark.pedantic(function, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="encoder, 30 s window")
def test_bench_encoder_torch(benchmark, bench):
    _, reference, mel, _, _ = bench
    _pedantic(benchmark, lambda: reference.encode(mel))


@pytest.mark.benchmark(group="encoder, 30 s window")
def test_bench_encoder_max(benchmark, bench):
    candidate, _, mel, _, _ = bench
    _pedantic(benchmark, lambda: candidate.encoder(mel))


@pytest.mark.benchmark(group=f"greedy decoding with KV cache: prompt + {TOKENS} tokens per run")
def test_bench_decode_torch(benchmark, bench):
    _, reference, _, features, prompt = bench
    _pedantic(benchmark, lambda: reference.decode_seconds(prompt, features, TOKENS))


@pytest.mark.benchmark(group=f"greedy decoding with KV cache: prompt + {TOKENS} tokens per run")
def test_bench_decode_max(benchmark, bench):
    candidate, _, _, features, prompt = bench
    inference = MaxInference(candidate.text_decoder)
    _pedantic(benchmark, lambda: decode_seconds(inference, prompt, features, TOKENS))


@pytest.fixture(scope="module", params=ctranslate2_peer.COMPUTE_TYPES)
def peer(request, bench, load_checkpoint):
    if BENCH_DTYPE != "float32":
        pytest.skip("CTranslate2 is compared with float32 models")
    peers = ctranslate2_peer.peers(load_checkpoint(BENCH_MODEL), torch.get_num_threads())
    return next(p for p in peers if p.compute_type == request.param)


@pytest.mark.benchmark(group="encoder, 30 s window")
def test_bench_encoder_ctranslate2(benchmark, bench, peer):
    mel = bench[2].numpy()
    _pedantic(benchmark, lambda: peer.encode(mel))


@pytest.mark.benchmark(group=f"greedy decoding with KV cache: prompt + {TOKENS} tokens per run")
def test_bench_decode_ctranslate2(benchmark, bench, peer):
    """CTranslate2's ``generate`` of the same prompt and token count, the end of text suppressed
    (its whole call: the prompt's forward pass included, unlike the marginal per-token figure
    of the report)."""
    _, _, _, features, prompt = bench
    args = (features.numpy(), prompt[0].tolist(), TOKENS)
    _pedantic(benchmark, lambda: peer.generate(*args, suppress_tokens=[peer.eot]))
