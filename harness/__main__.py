"""``python -m harness``: the command line (see harness/cli.py)."""

from harness.cli import main

raise SystemExit(main())
