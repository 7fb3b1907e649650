"""Where the repository keeps what the harness reads and writes, defined once."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
REPORTS = REPO / "reports"
