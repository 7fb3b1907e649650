"""``make test``: every test file in a pytest process of its own, two files at a time, each on
its own core.

One process per file: in one process for the whole suite, MAX 26.7 corrupts memory after enough
models have come and gone (segfaults inside ``Model.execute`` or at teardown, garbage from a fresh
q4_k graph); no file alone has done so. Two at a time: a cold run is mostly MAX compiling, and a
compile keeps about one core busy (user time 1.2x wall time), so the second core would idle.
Each lane on its own cores: MAX runs a graph on every core it may use, and a busy process on one
of them slows all of it (tiny.en, per decoded token: 7.5-9.2 ms alone on 2 cores, 25-28 ms beside
a busy process; pinned to one core, 13-18 ms with or without a busy process on the other), so
two unpinned lanes took as long as one: a cold test_cli.py took 36 min beside test_repro.py
against 17 min alone. Two files asking for the same graph do not compile it twice: the second
waits for the first's and reads it (``engine._claimed``).

Usage: ``python parity_tests/run_files.py [pytest options...]``; exit 1 if any file failed.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

LANES = 2
# The files that took longest cold (empty caches), longest first, so that the short ones fill
# the gaps at the end; the others follow in name order. Minutes in two pinned lanes, 2026-12-04.
LONGEST_FIRST = [
    "test_repro.py",  # 56.8: every planted fault's repro.py compiles its own graph
    "test_cli.py",  # 22.7
    "test_faults.py",  # 3.8 (after test_repro.py compiled its faults' graphs)
    "test_decoder.py",  # 14.8
    "test_pretrained.py",  # 6.4
    "test_encoder.py",  # 3.8
    "test_fixture_model.py",  # 4.1
    "test_candidates.py",  # 6.4
    "test_quantized.py",  # 6.3
]
STARTED = time.monotonic()
PRINTING = threading.Lock()  # two lanes: one whole message at a time


def ordered(folder: Path) -> list[Path]:
    files = sorted(folder.glob("test_*.py"))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    return sorted(files, key=lambda f: (rank.get(f.name, len(rank)), f.name))


def clock() -> str:
    minutes, seconds = divmod(int(time.monotonic() - STARTED), 60)
    return f"[{minutes:3d}:{seconds:02d}]"


def say(text: str) -> None:
    with PRINTING:
        print(text, flush=True)


def lane_cores(lanes: int) -> list[set[int]]:
    """The cores this process may use, dealt into ``lanes`` groups (fewer if cores are fewer)."""
    cores = sorted(os.sched_getaffinity(0))
    count = min(lanes, len(cores))
    return [set(cores[i::count]) for i in range(count)]


def run(path: Path, options: list[str], cores: set[int]) -> tuple[Path, int, float]:
    """One file's pytest on ``cores``; its output is printed whole when it ends."""
    say(f"{clock()} {path.name}: started")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(path), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    seconds = time.monotonic() - start
    # Exit 5: every test of the file deselected (``-m "not slow"``), not a failure.
    status = "passed" if done.returncode in (0, 5) else f"FAILED (exit {done.returncode})"
    say(f"{done.stdout}{clock()} {path.name}: {status} in {seconds:.0f} s")
    return path, done.returncode, seconds


def main(options: list[str]) -> int:
    files = ordered(Path(__file__).parent)
    todo: queue.Queue[Path] = queue.Queue()
    for path in files:
        todo.put(path)
    results: list[tuple[Path, int, float]] = []

    def lane(cores: set[int]) -> None:  # takes the next file until none is left
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            results.append(run(path, options, cores))

    lanes = [threading.Thread(target=lane, args=(cores,)) for cores in lane_cores(LANES)]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    failed = [path.name for path, code, _ in results if code not in (0, 5)]
    print(f"{clock()} {len(files)} files, {len(lanes)} at a time; slowest:")
    for path, _, seconds in sorted(results, key=lambda r: -r[2])[:8]:
        print(f"  {seconds / 60:5.1f} min  {path.name}")
    for name in failed:
        print(f"FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
