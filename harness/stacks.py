"""Every thread's Python stack on request, for the watchdog of ``make test``.

``parity_tests/run_files.py`` sets ``MAX_WHISPER_STACKS`` to a folder; a process that calls
``dump_on_request`` then writes its stacks to ``<folder>/<pid>.txt`` on SIGUSR1 (faulthandler),
so a test file that hangs (one hung CI for 80 minutes and printed nothing) says where. Without
the variable nothing is registered.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from pathlib import Path

STACKS = "MAX_WHISPER_STACKS"
_open: list = []  # faulthandler writes to the file's descriptor: keep it open


def dump_on_request() -> None:
    folder = os.environ.get(STACKS)
    if not folder:
        return
    file = (Path(folder) / f"{os.getpid()}.txt").open("w")
    _open.append(file)
    faulthandler.register(signal.SIGUSR1, file=file, all_threads=True)
