"""Each engine timed in a process of its own, stopped whenever it is not its turn.

Engines in one process slow one another. Once a process has executed a MAX graph, MAX 26.7 keeps
a thread that wakes ~4,500 times a second for the life of the process (~16% of a core while
idle; ``machine.idle_cpu_share``): timed in the report's process after parity had run MAX,
PyTorch's tiny.en encoder took 231-241 ms against 181-195 where MAX never ran, and CTranslate2
int8's 268-295 against 218-246. Once CTranslate2 (which brings its own libgomp) has run in a
process, PyTorch's base decoding there takes 21.6-23.8 ms per token against 14.1-14.4 before,
idle or not (2026-12-05, 2-core Xeon). So each engine runs in a child that is stopped (SIGSTOP)
between its calls, so that neither its idle threads nor its spinning workers take CPU from the
engine being timed, and times its own calls, so that the pipe costs it nothing.

``python -m harness.speed.engine_process CHECKPOINT DEVICE DTYPE ENGINE``: the child, ENGINE
being the engine's key in parity.json (``torch``, ``max``, ``max-<weights>``, ``ct2-<compute
type>``). It reads pickled ``(method, args)`` from stdin, one ``Backend`` call each, and writes
each result pickled to stdout; stray output (MAX's, the compile progress) goes to stderr.
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

import torch

from harness.child_process import child_env
from harness.errors import HarnessError
from harness.inputs import checkpoints
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.whisper import MaxWhisper
from harness.peers import ctranslate2 as ctranslate2_peer
from harness.speed.backends import (
    Backend,
    TorchWhisper,
    ctranslate2_backend,
    max_backend,
    torch_backend,
)

PR_SET_PDEATHSIG = 1


class EngineProcess:
    """The engine ``name`` (its key in parity.json) on ``checkpoint`` (a spec
    ``checkpoints.load`` takes), loaded in a child process, stopped between calls; ``backend``
    presents it to the timer."""

    def __init__(self, checkpoint: str, device: str, dtype: str, name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, checkpoint, device, dtype, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        self.label = self._reply()
        self._stop()

    def __enter__(self) -> EngineProcess:
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
                f"{self.name}: its timing process exited {code} (its error is above)"
            ) from None


def _die_with_parent() -> None:
    """A child left stopped by a parent that died would stay forever: Linux kills it. Set by
    the child itself (no ``preexec_fn``: code between fork and exec can deadlock in a parent
    with threads, and the report's has PyTorch's)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def serve(checkpoint: str, device: str, dtype: str, name: str) -> None:
    _die_with_parent()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a print must not corrupt the replies
    backend = loaded_backend(checkpoints.load(checkpoint), device, dtype, name)
    _send(replies, backend.label)
    while True:
        try:
            method, args = pickle.load(sys.stdin.buffer)
        except EOFError:  # the parent closed the pipe
            return
        _send(replies, getattr(backend, method)(*args))


def loaded_backend(checkpoint: Checkpoint, device: str, dtype: str, name: str) -> Backend:
    """The engine ``name`` on ``checkpoint``, loaded: PyTorch, a MAX weights mode (``max`` is
    float32) or CTranslate2 at one compute type."""
    if name == "torch":
        return torch_backend(TorchWhisper(checkpoint.model, device, dtype))
    if name == "max" or name.startswith("max-"):
        weights = name.removeprefix("max").removeprefix("-") or "float32"

        def say(graph: str) -> None:
            print(f"{name} timing process: compiling {graph}", file=sys.stderr, flush=True)

        model = MaxWhisper(
            checkpoint, Engine(device, DTYPES[dtype], on_compile=say), weights=weights
        )
        model.load()
        return max_backend(model)
    for peer in ctranslate2_peer.peers(checkpoint, torch.get_num_threads()):
        if peer.name == name:
            return ctranslate2_backend(peer)
    raise HarnessError(f"no engine {name!r}: torch, max, max-<weights> or ct2-<compute type>")


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
