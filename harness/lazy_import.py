"""``lazy("module")``: a module imported on first use of one of its attributes.

``python -m harness transcribe`` runs once per file, and what it does not use on that path (the
report and fault machinery, MAX for ``--backend torch``, PyAV for a WAV file) should cost it
nothing; MAX's path puts PyTorch's import off until its own work is under way (``cli``).

A stand-in object, not importlib's ``LazyLoader``: that one puts a half-made module in
``sys.modules``, and anything that walks ``sys.modules`` (``inspect.getmodule``, which importing
PyTorch calls) then imports every such module at once, mid-import, in whatever order it meets
them, which broke on circular imports between them.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module ``name``; reading an attribute imports it (once: Python keeps it)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> Any:
    """``import name``, done when one of its attributes is first read."""
    return LazyModule(name)
