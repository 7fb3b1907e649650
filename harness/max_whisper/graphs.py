"""What the encoder, the decoder and the sub-stage graphs share: compile once, bind weights once.

A part of the model (``MaxAudioEncoder``, ``MaxTextDecoder``, ``MaxSubStages``) has a few kinds of
graph. Each kind is compiled once per shape, under a name that encodes it (the engine keeps
compiled graphs by name), and bound once per weight prefix: one compiled block graph serves every
block. Subclasses say how to build a kind (``graph``), what its shape is (``shape``) and which
weights it reads (``weights``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from max.dtype import DType
from max.engine import Model
from max.graph import Graph, Module

from harness.max_whisper.engine import Engine, GraphSpec
from harness.max_whisper.host_arrays import HostArray
from harness.max_whisper.layers import Declared, check_bound
from harness.max_whisper.quantized import FLOAT32, WeightsMode
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.max_whisper.weights import StateDict, fault_remapped, registry
from harness.stages import __file__ as STAGES_FILE

if TYPE_CHECKING:
    from harness.openai_whisper import ModelDimensions


class BoundGraphs:
    """Compiled graphs of one part of the model, bound to one checkpoint's weights."""

    family = ""  # graph names start whisper_<family>_
    # Kinds compiled together, as one MAX module (``Engine.compile_together``): the graphs that
    # are used together. A kind in none is compiled alone.
    units: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self,
        dims: ModelDimensions,
        state_dict: StateDict,
        engine: Engine,
        variant: Variant = FAITHFUL,
        weights: WeightsMode | str = FLOAT32,
        checkpoint_id: str | None = None,
    ) -> None:
        """``checkpoint_id``: ``Checkpoint.identity`` where ``state_dict`` is that checkpoint's,
        unchanged; quantised weights kept on disk are then found without hashing them."""
        self.dims, self.engine, self.variant = dims, engine, variant
        self.state_dict = fault_remapped(state_dict, variant, dims)
        self.state_id = f"{checkpoint_id}/{self.variant_tag}" if checkpoint_id else None
        self.weights_mode = WeightsMode.parse(weights)  # read by the graph kinds that support it
        self._models: dict[str, Model] = {}

    def model(self, kind: str, prefix: str) -> Model:
        """The graph of ``kind``, compiled (once per name), with the weights under ``prefix``."""
        key = f"{kind}:{prefix}"
        if key not in self._models:
            name, weights = self.binding(kind, prefix)
            self.adopt(kind, prefix, self.engine.bind(name, weights))
        return self._models[key]

    def binding(self, kind: str, prefix: str) -> tuple[str, dict[str, HostArray]]:
        """The graph of ``kind``'s name, compiled, and its weights under ``prefix``: what
        ``Engine.bind_many`` takes, to bind several graphs of a unit at once."""
        name = self.graph_name(kind)
        self.engine.compile_together(self.specs(*self.unit(kind)))  # no-op when compiled
        declared = self.engine.declared[name]
        weights = self.weights(kind, prefix, declared)
        check_bound(declared, weights, name)
        return name, weights

    def adopt(self, kind: str, prefix: str, model: Model) -> None:
        """Keep ``model``, bound elsewhere (``binding``), as the graph of ``kind`` at ``prefix``."""
        self._models[f"{kind}:{prefix}"] = model

    def unit(self, kind: str) -> tuple[str, ...]:
        """The kinds compiled with ``kind``. A planted fault's graphs are compiled one by one,
        so that a graph MAX refuses is found at its own stage (``faults/localise.py``); its
        graphs that the fault leaves alone are the faithful ones (``compile_together``)."""
        if self.variant != FAITHFUL:
            return (kind,)
        return next((unit for unit in self.units if kind in unit), (kind,))

    def specs(self, *kinds: str) -> list[GraphSpec]:
        """The graphs of ``kinds``; each is built only if the engine's store lacks it."""
        return [GraphSpec(self.graph_name(k), k, self._builder(k), self.recipe(k)) for k in kinds]

    def _builder(self, kind: str) -> Callable[[Module], Graph]:
        return lambda module: self.graph(kind, module)

    def recipe(self, kind: str) -> str:
        """All a graph of ``kind`` is built from, which the engine's store knows it by: its
        name (kind, shape, dtype, weights mode), every dim, every variant field, and the code."""
        parts = [self.graph_name(kind), asdict(self.dims), asdict(self.variant), source_digest()]
        return json.dumps(parts, sort_keys=True)

    def graph(self, kind: str, module: Module | None = None) -> Graph:
        """The uncompiled graph of ``kind``, built into ``module`` (a new one by default), its
        weights under its name (``Scope.of``)."""
        raise NotImplementedError

    def shape(self, kind: str) -> str:
        """The dims a graph of ``kind`` depends on, as a short tag for its name."""
        raise NotImplementedError

    def weights(
        self, kind: str, prefix: str, declared: Mapping[str, Declared]
    ) -> dict[str, HostArray]:
        """The weights a graph ``declared``, relative to the module at ``prefix``."""
        return registry(self.state_dict, prefix, declared, self.dtype)

    def graph_name(self, kind: str) -> str:
        dtype = self.engine.dtype.name
        return f"whisper_{self.family}_{kind}_{self.shape(kind)}_{dtype}_{self.variant_tag}"

    @property
    def variant_tag(self) -> str:
        """``faithful``, or a digest of the variant's fields: the same in every process (Python's
        ``hash`` of a string is not), so a fault's graphs are found in the caches next time."""
        if self.variant == FAITHFUL:
            return "faithful"
        return "v" + hashlib.sha256(repr(self.variant).encode()).hexdigest()[:12]

    @property
    def dtype(self) -> DType:
        return self.engine.dtype


@cache
def source_digest() -> str:
    """sha256 of the code every graph is built from: this folder's modules and the stage table.
    Any change to them gives every graph a new recipe, so the store never serves a stale one."""
    digest = hashlib.sha256()
    for path in [*sorted(Path(__file__).parent.glob("*.py")), Path(STAGES_FILE)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
