"""Session-wide fixtures: one MAX engine and one load per checkpoint for the whole test run.

Compiling a MAX graph costs about a minute here, so every test module shares the same
``Engine`` (compiled graphs are kept by name) and the same loaded checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.compare import tolerances
from harness.inputs import checkpoints
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.stacks import dump_on_request

dump_on_request()  # for make test's watchdog (parity_tests/run_files.py)


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="session")
def load_checkpoint() -> Callable[[str], Checkpoint]:
    loaded: dict[str, Checkpoint] = {}

    def load(spec: str) -> Checkpoint:
        if spec not in loaded:
            loaded[spec] = checkpoints.load(spec)
        return loaded[spec]

    return load


@pytest.fixture(scope="session")
def float32_tolerances() -> tolerances.Tolerances:
    return tolerances.load("float32")
