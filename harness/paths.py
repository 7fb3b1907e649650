"""Where the repository keeps what the harness reads and writes, defined once."""

import os
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
REPORTS = REPO / "reports"


def cache_dir() -> Path:
    """The user's cache root (``XDG_CACHE_HOME``, else ``~/.cache``), read at each call."""
    root = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(root)


def evict_least_recent(files: Iterable[Path], limit: int) -> list[Path]:
    """Remove the least recently used of ``files`` (by mtime) until they hold at most ``limit``
    bytes; the removed paths are returned, so a caller can remove what belongs with them."""
    total, removed = 0, []
    for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        total += path.stat().st_size
        if total > limit:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text_whole(path: Path, text: str) -> None:
    """Write ``path`` whole (a reader never sees half of it), or not at all: for cache files
    whose loss only costs work done again (a compile, a hash), so a failure is not an error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
