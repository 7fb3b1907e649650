"""``lazy("module")``: a module imported on first use of one of its attributes.

Python's ``importlib.util.LazyLoader`` recipe. ``python -m harness transcribe`` runs once per
file, and what it does not use on that path (the report and fault machinery, MAX for
``--backend torch``, PyAV for a WAV file) should cost it nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy(name: str) -> ModuleType:
    """``import name``, executed when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:  # as an import does: ``harness.report.build`` works
        setattr(sys.modules[parent], child, module)
    return module
