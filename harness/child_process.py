"""The environment of the Python processes the harness starts (transcripts timed, repros run).

Importing MAX 26.7's ``max.nn`` sets ``PYTHONEXECUTABLE`` (pyenv's shim) and ``PYTHONPATH=:`` in
the process's C environment, outside ``os.environ``. A child started with the inherited
environment then runs outside the virtual environment: no torch, no max. Children get
``os.environ`` as Python sees it instead.
"""

from __future__ import annotations

import os


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}
