"""``python -m harness``: the command line (see harness/cli.py).

``transcribe`` ends with ``os._exit`` once its output is flushed: nothing is left to do, and the
interpreter's teardown of torch's and MAX's modules is time a person running it once per file
waits for too: 0.49 s (MAX) and 0.64 s (PyTorch) of a 3.9-4.0 s warm first transcript of a
LibriVox clip with tiny.en, 1.17x in both (6 runs each in turns, 2026-12-05).
"""

import os
import sys

from harness.cli import main
from harness.stacks import dump_on_request

dump_on_request()

code = main()
if sys.argv[1:2] == ["transcribe"]:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
