"""Candidates: any Whisper implementation the harness can compare with openai-whisper.

Our MAX port (``max-whisper``, the default) is one candidate; ``adapters/`` holds the others the
harness ships. ``interface.py`` says what a candidate must do, ``findings.py`` how its failures
are reported, ``max_module.py`` and ``ladder.py`` run a ``max.nn`` Module port from its adapter.
"""

OURS = "max-whisper"  # our MAX port's candidate name, the default
