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

A watchdog: a file whose processes together use less than ``HUNG_SHARE`` of a core for
``HUNG_S``, or that runs past twice its cold time (``limit_s``), is hung (a CI run hung 80
minutes in test_cli.py, warm 8 minutes, and printed nothing). Its Python
stacks (``harness/stacks.py``) and, where gdb is installed, native ones are printed, its
processes killed, and the file run once more: a hang says nothing of its assertions, which the
second run makes in full. The summary names every file that hung; two hangs fail it.

Usage: ``python parity_tests/run_files.py [pytest options...]``; exit 1 if any file failed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.stacks import STACKS  # noqa: E402

LANES = 2
# The files that took longest cold (empty caches), longest first, so that the short ones fill
# the gaps at the end; the others follow in name order. Minutes in two pinned lanes, 2026-12-04.
LONGEST_FIRST = {
    "test_repro.py": 56.8,  # every planted fault's repro.py compiles its own graph
    "test_cli.py": 22.7,
    "test_faults.py": 3.8,  # after test_repro.py compiled its faults' graphs
    "test_decoder.py": 14.8,
    "test_pretrained.py": 6.4,
    "test_encoder.py": 3.8,
    "test_fixture_model.py": 4.1,
    "test_candidates.py": 6.4,
    "test_quantized.py": 6.3,
}
# Hung: a file's processes together below a third of a core for ten minutes. MAX's idle thread
# alone burns ~16% of a core (test_speed.py); a file waiting for another's compile waits minutes.
HUNG_S = 600
HUNG_SHARE = 1 / 3
POLL_S = 10
STARTED = time.monotonic()
PRINTING = threading.Lock()  # two lanes: one whole message at a time


def limit_s(path: Path) -> float:
    """Twice the file's cold time, and 20 minutes at least."""
    return max(2 * LONGEST_FIRST.get(path.name, 0), 20) * 60


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


def run(path: Path, options: list[str], cores: set[int]) -> tuple[Path, int | None, float]:
    """One file's pytest on ``cores``; its output is printed whole when it ends. Exit code None:
    it hung, and was killed (``HUNG_S``)."""
    say(f"{clock()} {path.name}: started")
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="stacks-") as stacks,
        tempfile.TemporaryFile("w+") as out,
    ):
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", str(path), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, STACKS: stacks},
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )
        code = watch(process, Path(stacks), limit_s(path))
        out.seek(0)
        output = out.read()
        if code is None:
            output += hung_report(path, Path(stacks))
    seconds = time.monotonic() - start
    # Exit 5: every test of the file deselected (``-m "not slow"``), not a failure.
    status = {0: "passed", 5: "passed", None: "HUNG: killed"}
    ended = status.get(code, f"FAILED (exit {code})")
    say(f"{output}{clock()} {path.name}: {ended} in {seconds:.0f} s")
    return path, code, seconds


def watch(process: subprocess.Popen, stacks: Path, limit: float) -> int | None:
    """``process``'s exit code; None if its tree went idle for ``HUNG_S`` or ran past ``limit``
    seconds: then its stacks are written to ``stacks`` and the tree is killed."""
    start = busy_at = time.monotonic()
    cpu = tree_cpu_seconds(process.pid)
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(timeout=POLL_S)
        now, used = time.monotonic(), tree_cpu_seconds(process.pid)
        if used - cpu > HUNG_SHARE * (now - busy_at):
            busy_at, cpu = now, used
        if now - busy_at > HUNG_S or now - start > limit:
            tree = descendants(process.pid)
            dump_stacks(tree, stacks)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            return None


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root``'s tree: its live processes', and their reaped children's."""
    ticks = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def dump_stacks(tree: list[int], stacks: Path) -> None:
    """Each process's command line, its Python stacks if it asked for them (SIGUSR1), and its
    native stacks where gdb is installed, into ``stacks``."""
    for pid in tree:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            (stacks / f"{pid}.cmd").write_bytes(command)
        if (stacks / f"{pid}.txt").exists():
            os.kill(pid, signal.SIGUSR1)
    time.sleep(2)
    for pid in tree if shutil.which("gdb") else ():
        native = subprocess.run(
            [
                "gdb",
                "-q",
                "-iex",
                "set auto-load off",
                "-p",
                str(pid),
                "-batch",
                "-ex",
                "thread apply all bt 25",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        (stacks / f"{pid}.gdb").write_text(native.stdout)


def hung_report(path: Path, stacks: Path) -> str:
    dumps = (f"--- {dump.name}\n{dump.read_text()}" for dump in sorted(stacks.iterdir()))
    return f"\n{path.name} HUNG; its processes' command lines and stacks:\n" + "\n".join(dumps)


def main(options: list[str]) -> int:
    files = ordered(Path(__file__).parent)
    todo: queue.Queue[Path] = queue.Queue()
    for path in files:
        todo.put(path)
    results: dict[Path, tuple[int | None, float]] = {}  # each file's last run
    hung: list[Path] = []

    def lane(cores: set[int]) -> None:  # takes the next file until none is left
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            _, code, seconds = run(path, options, cores)
            results[path] = code, seconds
            if code is None and path not in hung:
                hung.append(path)
                say(f"{clock()} {path.name}: running it again")
                todo.put(path)

    lanes = [threading.Thread(target=lane, args=(cores,)) for cores in lane_cores(LANES)]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    failed = [path.name for path, (code, _) in results.items() if code not in (0, 5)]
    print(f"{clock()} {len(files)} files, {len(lanes)} at a time; slowest:")
    for path, (_, seconds) in sorted(results.items(), key=lambda r: -r[1][1])[:8]:
        print(f"  {seconds / 60:5.1f} min  {path.name}")
    for path in hung:
        print(f"HUNG once (stacks above): {path.name}")
    for name in failed:
        print(f"FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
