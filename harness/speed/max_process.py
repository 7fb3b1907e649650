"""Each MAX weights mode timed in a process of its own, stopped whenever it is not its turn.

Once a process has executed a MAX graph, MAX 26.7 keeps a thread that wakes ~4,500 times a
second for the life of the process (~16% of a core while idle; ``machine.idle_cpu_share``).
Timed in the report's own process after parity had run MAX, PyTorch's tiny.en encoder took
231-241 ms against 181-195 where MAX never ran, and CTranslate2 int8's 268-295 against 218-246
(2026-12-05, 2-core Xeon): every ratio to a peer favoured MAX by up to 1.2x. So the timing
process never executes MAX: each mode runs in a child that is stopped (SIGSTOP) between its
calls, so neither its idle thread nor its spinning workers take CPU from the engine being
timed. The child times its own calls, so the pipe costs MAX nothing. Its own thread runs
during its turn, as it does for a user.

``python -m harness.speed.max_process CHECKPOINT DEVICE DTYPE WEIGHTS``: the child. It reads
pickled ``(method, args)`` from stdin, one ``Backend`` call each, and writes each result
pickled to stdout; stray output (MAX's, the compile progress) goes to stderr.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
from functools import partial
from typing import Any, BinaryIO

from harness.child_process import child_env
from harness.errors import HarnessError
from harness.inputs import checkpoints
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.whisper import MaxWhisper
from harness.speed.backends import Backend, max_backend

PR_SET_PDEATHSIG = 1


class MaxProcess:
    """A MAX weights mode on ``checkpoint`` (a spec ``checkpoints.load`` takes), loaded in a
    child process, stopped between calls; ``backend`` presents it to the timer."""

    def __init__(self, checkpoint: str, device: str, dtype: str, weights: str) -> None:
        self.weights = weights
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, checkpoint, device, dtype, weights],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            preexec_fn=_die_with_parent,
        )
        self.name, self.label = self._reply()
        self._stop()

    def __enter__(self) -> MaxProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def backend(self) -> Backend:
        calls = ("encode_seconds", "decode_seconds", "transcribe", "transcribe_batched")
        return Backend(self.name, self.label, *(partial(self.call, c) for c in calls))

    def call(self, method: str, *args: Any) -> Any:
        """Run ``method`` of the child's backend with ``args``; the child runs only meanwhile."""
        os.kill(self.process.pid, signal.SIGCONT)
        try:
            pickle.dump((method, args), self.process.stdin)
            self.process.stdin.flush()
            return self._reply()
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop the child, and return once it has stopped (a signal is delivered later)."""
        if self.process.returncode is None:  # not reaped after a crash
            os.kill(self.process.pid, signal.SIGSTOP)
            os.waitpid(self.process.pid, os.WUNTRACED)

    def close(self) -> None:
        self.process.kill()  # a stopped process too
        self.process.wait()

    def _reply(self) -> Any:
        try:
            return pickle.load(self.process.stdout)
        except EOFError:
            code = self.process.wait()
            raise HarnessError(
                f"MAX {self.weights}: its timing process exited {code} (its error is above)"
            ) from None


def _die_with_parent() -> None:
    """A child left stopped by a parent that died would stay forever: Linux kills it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def serve(checkpoint: str, device: str, dtype: str, weights: str) -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a print must not corrupt the replies
    backend = _loaded_backend(checkpoint, device, dtype, weights)
    _send(replies, (backend.name, backend.label))
    while True:
        try:
            method, args = pickle.load(sys.stdin.buffer)
        except EOFError:  # the parent closed the pipe
            return
        _send(replies, getattr(backend, method)(*args))


def _loaded_backend(checkpoint: str, device: str, dtype: str, weights: str) -> Backend:
    def say(name: str) -> None:
        print(f"MAX {weights} timing process: compiling {name}", file=sys.stderr, flush=True)

    engine = Engine(device, DTYPES[dtype], on_compile=say)
    model = MaxWhisper(checkpoints.load(checkpoint), engine, weights=weights)
    model.load()
    return max_backend(model)


def _send(replies: BinaryIO, value: Any) -> None:
    pickle.dump(value, replies)
    replies.flush()


if __name__ == "__main__":
    try:
        serve(*sys.argv[1:5])
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.flush()
    os._exit(0)  # no teardown of MAX's modules: nothing is left to do
