"""Files written whole or not at all: each is made beside its destination under a temporary name
and renamed into place, so a failed or interrupted run never leaves half a parity.json, fault
record or report folder behind. Also the JSON these documents are written as.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replaced_folder(folder: Path) -> Iterator[Path]:
    """A staging folder beside ``folder`` to fill; on leaving the block it replaces ``folder``
    whole, or on an error it is removed and ``folder`` stays as it was."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(document: dict[str, Any], path: Path) -> None:
    """``to_json(document)`` into ``path``, whole or not at all: written to a temporary file
    beside it, then renamed over it, so a failure never leaves half a document."""
    text = to_json(document)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON: an infinite SNR (bit-identical tensors) is written as null."""
    return json.dumps(_finite(report), indent=1, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
