"""Time to first transcript: a new process, from its start to its transcript on stdout.

What a person running ``python -m harness transcribe clip.wav`` once per file waits for:
interpreter start, imports, the checkpoint, the graphs (compiled, or read from a cache), the
audio, the transcript, and the process's exit. Any engine is timed the same way, by the command
line that runs it (``first_transcript(argv)``); ``harness_command`` builds the harness's own,
for ``--backend max`` or ``torch``. The caches are warm once each command has run once, which
``measure`` does before timing, then it runs the commands in turn, so a noisy neighbour slows
each alike, and keeps every run.

``python -m harness.speed.first_transcript clip.wav --model tiny.en --runs 5`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.child_process import child_env
from harness.errors import HarnessError
from harness.paths import REPO

BACKENDS = ("torch", "max")


@dataclass(frozen=True)
class FirstTranscript:
    """One run: the wall time of the process and what it printed."""

    seconds: float
    text: str


@dataclass(frozen=True)
class Timing:
    """Every run of one command, in order, and the transcript (the same in each run)."""

    runs: list[float]
    text: str
    warmup: float | None = None  # the untimed first run, which fills the caches
    command: list[str] = field(default_factory=list, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def first_transcript(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float | None = 600,
) -> FirstTranscript:
    """Run ``argv`` in a new process; its wall time and its stdout, stripped (the transcript).

    A command that fails is an error here, with the last line it wrote to stderr: a failure
    timed as a transcript would be a fast engine.
    """
    start = time.perf_counter()
    try:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=child_env() if env is None else dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{' '.join(argv)}: no transcript after {timeout} s") from None
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no stderr)"]
        raise HarnessError(f"{' '.join(argv)} exited {result.returncode}: {lines[-1]}")
    return FirstTranscript(seconds, result.stdout.strip())


def first_transcript_seconds(argv: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    """Seconds from starting ``argv`` to its exit with a transcript printed."""
    return first_transcript(argv, env).seconds


def harness_command(
    backend: str,
    model: str,
    clip: Path | str,
    device: str = "cpu",
    dtype: str = "float32",
    python: str = sys.executable,
) -> list[str]:
    """``python -m harness transcribe`` for ``backend`` (max or torch): what a user types."""
    if backend not in BACKENDS:
        raise HarnessError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return [
        python,
        "-m",
        "harness",
        "transcribe",
        str(clip),
        "--backend",
        backend,
        "--model",
        model,
        "--device",
        device,
        "--dtype",
        dtype,
    ]


def measure(
    commands: Mapping[str, Sequence[str]],
    runs: int = 3,
    warmup: bool = True,
    env: Mapping[str, str] | None = None,
) -> dict[str, Timing]:
    """Each command ``runs`` times, the commands in turn, after one untimed run each.

    The untimed run fills the caches (MAX's compiled graphs, converted checkpoints, the OS's
    file cache): this is time to first transcript with warm caches. A command whose transcript
    changes between runs is an error.
    """
    if runs < 1:
        raise HarnessError(f"runs must be at least 1, got {runs}")
    first = {name: first_transcript(argv, env) for name, argv in commands.items()} if warmup else {}
    times: dict[str, list[float]] = {name: [] for name in commands}
    texts = {name: run.text for name, run in first.items()}
    for _ in range(runs):
        for name, argv in commands.items():
            run = first_transcript(argv, env)
            if texts.setdefault(name, run.text) != run.text:
                raise HarnessError(f"{name}: the transcript changed between runs")
            times[name].append(run.seconds)
    return {
        name: Timing(
            times[name],
            texts[name],
            first[name].seconds if name in first else None,
            list(commands[name]),
        )
        for name in commands
    }


def harness_first_transcripts(
    model: str, clip: Path | str, backends: Sequence[str] = BACKENDS, runs: int = 3, **kwargs
) -> dict[str, Timing]:
    """Time to first transcript of the harness's own backends, side by side."""
    commands = {backend: harness_command(backend, model, clip, **kwargs) for backend in backends}
    return measure(commands, runs=runs)


def table(timings: Mapping[str, Timing]) -> str:
    lines = ["| command | median s | min–max s | runs | transcript |", "|---|---|---|---|---|"]
    for name, timing in timings.items():
        spread = f"{min(timing.runs):.2f}–{max(timing.runs):.2f}"
        text = timing.text if len(timing.text) <= 60 else timing.text[:57] + "..."
        lines.append(f"| {name} | {timing.median:.2f} | {spread} | {len(timing.runs)} | {text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.speed.first_transcript", description=__doc__
    )
    parser.add_argument("clip", type=Path)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="default: both")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        timings = harness_first_transcripts(
            args.model, args.clip, args.backend or BACKENDS, runs=args.runs
        )
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(timings))
    for name, timing in timings.items():
        runs = ", ".join(f"{t:.2f}" for t in timing.runs)
        print(f"{name}: runs {runs}; untimed first run {timing.warmup:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} after the runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
