"""Where the repository keeps what the harness reads and writes, defined once."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
REPORTS = REPO / "reports"


def cache_dir() -> Path:
    """The user's cache root (``XDG_CACHE_HOME``, else ``~/.cache``), read at each call."""
    root = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(root)
