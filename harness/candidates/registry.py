"""``--candidate NAME_OR_PATH[:fixed]``: our port, a shipped adapter, or an adapter file.

An adapter file is a Python file that defines either ``ADAPTER``, a ``ModuleAdapter`` for a
``max.nn`` Module port (see ``adapters/max_pipelines_encoder.py``), or, for an implementation in
anything else, ``build_candidate(dims, state_dict)`` returning a ``StageCandidate`` or a
``BoundaryCandidate`` (``interface.py``). ``:fixed`` applies a ModuleAdapter's documented fixes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from harness.candidates import OURS
from harness.errors import HarnessError
from harness.openai_whisper import ModelDimensions

if TYPE_CHECKING:  # max.nn, imported on first use: it leaks PYTHONEXECUTABLE (child_process.py)
    from harness.candidates.max_module import ModuleAdapter

SHIPPED = {"max-pipelines-encoder": "harness.candidates.adapters.max_pipelines_encoder"}
FIXED = ":fixed"


# (dims, openai-whisper's state dict) -> a StageCandidate or a BoundaryCandidate
Factory = Callable[[ModelDimensions, Mapping[str, torch.Tensor]], object]


@dataclass(frozen=True)
class Candidate:
    """A candidate as asked for: its name and its adapter or factory (neither: our port)."""

    name: str
    adapter: ModuleAdapter | None
    origin: str  # the adapter's file, or our port's package
    fixes_applied: tuple[str, ...] = ()
    factory: Factory | None = None

    @property
    def ours(self) -> bool:
        return self.adapter is None and self.factory is None


def resolve(spec: str) -> Candidate:
    """The candidate ``spec`` names; a HarnessError naming the choices when it names none."""
    if spec == OURS:
        return Candidate(OURS, None, "harness/max_whisper")
    from harness.candidates.max_module import ModuleAdapter

    base, fixed = (spec[: -len(FIXED)], True) if spec.endswith(FIXED) else (spec, False)
    module = _adapter_module(base)
    adapter = getattr(module, "ADAPTER", None)
    factory = getattr(module, "build_candidate", None)
    if factory is not None and not fixed:
        return Candidate(spec, None, module.__file__, factory=factory)
    if not isinstance(adapter, ModuleAdapter):
        raise HarnessError(
            f"--candidate {spec}: {module.__file__} defines no ADAPTER (a ModuleAdapter)"
            + ("" if fixed else " nor build_candidate")
        )
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
