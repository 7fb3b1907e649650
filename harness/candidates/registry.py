"""``--candidate NAME_OR_PATH[:fixed]``: our port, a shipped adapter, or an adapter file.

An adapter file is a Python file that defines ``ADAPTER``, a ``ModuleAdapter`` (see
``adapters/max_pipelines_encoder.py``). ``:fixed`` applies the adapter's documented fixes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

from harness.candidates import OURS
from harness.candidates.max_module import ModuleAdapter
from harness.errors import HarnessError

SHIPPED = {"max-pipelines-encoder": "harness.candidates.adapters.max_pipelines_encoder"}
FIXED = ":fixed"


@dataclass(frozen=True)
class Candidate:
    """A candidate as asked for: its name, and its adapter (None for our own port)."""

    name: str
    adapter: ModuleAdapter | None
    origin: str  # the adapter's file, or our port's package
    fixes_applied: tuple[str, ...] = ()

    @property
    def ours(self) -> bool:
        return self.adapter is None


def resolve(spec: str) -> Candidate:
    """The candidate ``spec`` names; a HarnessError naming the choices when it names none."""
    if spec == OURS:
        return Candidate(OURS, None, "harness/max_whisper")
    base, fixed = (spec[: -len(FIXED)], True) if spec.endswith(FIXED) else (spec, False)
    module = _adapter_module(base)
    adapter = getattr(module, "ADAPTER", None)
    if not isinstance(adapter, ModuleAdapter):
        raise HarnessError(f"--candidate {spec}: {module.__file__} defines no ADAPTER")
    if fixed and not adapter.fixes:
        raise HarnessError(f"--candidate {spec}: {adapter.name} documents no fixes")
    applied = tuple(f.name for f in adapter.fixes) if fixed else ()
    adapter = adapter.with_fixes() if fixed else adapter
    return Candidate(spec, adapter, module.__file__, applied)


def _adapter_module(base: str) -> ModuleType:
    if base in SHIPPED:
        return importlib.import_module(SHIPPED[base])
    path = Path(base)
    if path.suffix != ".py" or not path.is_file():
        choices = ", ".join([OURS, *SHIPPED, *(f"{s}{FIXED}" for s in SHIPPED)])
        raise HarnessError(f"--candidate {base}: not {choices}, nor an adapter file (.py)")
    spec = spec_from_file_location(f"candidate_adapter_{path.stem}", path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ours_section() -> dict[str, object]:
    """``parity.json["candidate"]`` for our port: it exposes every stage's input, and the
    report covers everything."""
    return {
        "name": OURS,
        "adapter": None,
        "form": "stage inputs exposed: every stage isolated and chained",
        "covers": ["mel", "encoder", "decoder", "transcripts", "language", "peers", "speed"],
        "findings": [],
    }
