"""A candidate written as a ``max.nn`` Module, run as one graph with every stage boundary an output.

Its adapter (``ModuleAdapter``, in a file the user writes: see ``adapters/``) says how to build
the module from the checkpoint's dims, how openai-whisper's weight names and layouts become the
module's, how its input is laid out and which sub-module computes which stage. The harness taps,
with MAX's layer hooks, the input of each stage's successor (the boundary the stage table and the
PyTorch tracer define) and the last stage's output, so the module's own ``__call__`` runs
unchanged and one compile covers every stage. A module cannot be entered mid-way, so its stages
are compared chained only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, ops
from max.nn.layer import Module, add_layer_hook
from max.nn.layer import layer as max_layer

from harness.candidates.findings import (
    CandidateFailure,
    Finding,
    at_candidate_boundary,
    attribute_assigned_at,
    frames_in,
    line_at,
    quoted_weight,
    transpose_fix,
    where_assigned,
)
from harness.max_whisper.engine import Engine, to_numpy
from harness.openai_whisper import ModelDimensions
from harness.stages import Stage, encoder_stages


def as_stored(name: str, weight: np.ndarray) -> np.ndarray:
    """openai-whisper's layout, unchanged."""
    return weight


def declared_input(module: Module, dims: ModelDimensions) -> TensorType:
    """The input type the module declares (``input_types()[0]``), as MAX's pipelines do."""
    return module.input_types()[0]


def mel_as_is(mel: np.ndarray) -> np.ndarray:
    """openai-whisper's mel, (batch, n_mels, frames)."""
    return mel


@dataclass(frozen=True)
class ModuleAdapter:
    """What the harness needs to know about a ``max.nn`` Module port of the encoder.

    ``weight_names`` and ``stages`` are patterns over the block index ``{i}``:
    ``"blocks.{i}.attn.query.weight": "layers.{i}.attention.wq.weight"``, ``"blocks.{i}":
    "layers.{i}"``. Weight names are relative to openai-whisper's ``encoder``.
    """

    name: str
    source: Path  # the candidate's file: findings point at its lines
    construct: Callable[[ModelDimensions, DType, DeviceRef], Module]
    weight_names: Mapping[str, str]
    stages: Mapping[str, str]  # stage name -> the candidate's sub-module path
    weight_layout: Callable[[str, np.ndarray], np.ndarray] = as_stored  # (its name, array)
    input_type: Callable[[Module, ModelDimensions], TensorType] = declared_input
    input_layout: Callable[[np.ndarray], np.ndarray] = mel_as_is
    fixes: tuple[Fix, ...] = ()

    def with_fixes(self, count: int | None = None) -> ModuleAdapter:
        """This adapter with its first ``count`` documented fixes applied (all by default)."""
        applied = self.fixes[:count]
        adapter = self
        for fix in applied:
            adapter = fix.apply(adapter)
        suffix = "" if not applied else ":fixed" if applied == self.fixes else f"+{len(applied)}"
        return replace(adapter, name=self.name + suffix, fixes=())


@dataclass(frozen=True)
class Fix:
    """One documented fix of the candidate, applied by changing the adapter, never its source."""

    name: str
    apply: Callable[[ModuleAdapter], ModuleAdapter]


def expand(patterns: Mapping[str, str], n_layer: int) -> dict[str, str]:
    """Patterns over ``{i}`` written out for every block."""
    names = {}
    for ours, theirs in patterns.items():
        indices = range(n_layer) if "{i}" in ours else [None]
        names.update({ours.format(i=i): theirs.format(i=i) for i in indices})
    return names


class ModuleCandidate:
    """One adapter bound to one checkpoint's encoder weights and one engine."""

    def __init__(
        self,
        adapter: ModuleAdapter,
        dims: ModelDimensions,
        state_dict: Mapping[str, torch.Tensor],
        engine: Engine,
    ) -> None:
        self.adapter, self.dims, self.state_dict, self.engine = adapter, dims, state_dict, engine
        self.modules = expand(adapter.stages, dims.n_audio_layer)  # stage -> sub-module path

    def stages(self) -> list[Stage]:
        return encoder_stages(self.dims.n_audio_layer)

    def boundaries(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        """Every stage's output from one run of one graph on ``mel`` (batch, n_mels, frames)."""
        graph, weights = self.build()
        with at_candidate_boundary("compile"):
            compiled = self.engine.compile(lambda: graph, f"{self.adapter.name} {graph.name}")
        with at_candidate_boundary("run"):
            model = self.engine.init(compiled, weights)
            laid_out = np.ascontiguousarray(self.adapter.input_layout(mel))
            outputs = model.execute(self.engine.to_device(laid_out))
        return {s.name: to_numpy(o) for s, o in zip(self.stages(), outputs, strict=True)}

    def build(self) -> tuple[Graph, dict[str, np.ndarray]]:
        """Construct the module, load its weights, build the tapped graph: the steps whose
        failures are findings. A fresh module each time: MAX 26.7 leaves a module that was
        in a failed graph build broken for the next one."""
        module = self._construct()
        weights = self._load(module)
        return self._graph(module), weights

    def declared_input(self) -> TensorType:
        """The input type the adapter declares for a freshly built module."""
        return self.adapter.input_type(self._construct(), self.dims)

    def graph_name(self) -> str:
        """Named by shape alone, so adapters that build the same graph (a shipped one and a
        user's copy of it) share MAX's cached compile; the engine keeps each compiled graph
        under the adapter's name too (``boundaries``), so different graphs never share one."""
        d = self.dims
        shape = f"m{d.n_mels}c{d.n_audio_ctx}s{d.n_audio_state}h{d.n_audio_head}l{d.n_audio_layer}"
        return f"candidate_{shape}"

    def _construct(self) -> Module:
        try:
            with at_candidate_boundary("construct"):
                return self.adapter.construct(self.dims, self.engine.dtype, self.engine.device_ref)
        except CandidateFailure as failure:
            frames = frames_in(self.adapter.source, failure.__cause__)
            if not frames:
                raise
            attribute = attribute_assigned_at(self.adapter.source, frames[0].lineno)
            stage = self.stage_of(attribute) if attribute else None
            where = line_at(self.adapter.source, frames[-1].lineno)
            raise _restated(failure, stage=stage, where=where) from failure.__cause__

    def _load(self, module: Module) -> dict[str, np.ndarray]:
        weights = self.candidate_weights()
        try:
            with at_candidate_boundary("load weights"):
                module.load_state_dict(weights)
        except CandidateFailure as failure:
            name = quoted_weight(failure.finding.error)
            if name is None:
                raise
            attribute = name.split(".")[0]
            where = where_assigned(self.adapter.source, attribute)
            fix = transpose_fix(failure.finding.error)
            stage = self.stage_of(name)
            raise _restated(failure, stage=stage, where=where, fix=fix) from failure.__cause__
        return weights

    def candidate_weights(self) -> dict[str, np.ndarray]:
        """openai-whisper's encoder weights under the candidate's names and in its layouts."""
        names = expand(self.adapter.weight_names, self.dims.n_audio_layer)
        weights = {}
        for key, tensor in self.state_dict.items():
            if not key.startswith("encoder."):
                continue
            ours = key.removeprefix("encoder.")
            if ours not in names:
                raise CandidateFailure(
                    Finding(None, "map weights", f"{key} has no name in the adapter's weight map")
                )
            array = tensor.detach().to(torch.float32).numpy()
            weights[names[ours]] = np.ascontiguousarray(self.adapter.weight_layout(ours, array))
        return weights

    def _graph(self, module: Module) -> Graph:
        seen: dict[str, TensorValue] = {}
        with at_candidate_boundary("build graph"):
            input_type = self.adapter.input_type(module, self.dims)
        with Graph(self.graph_name(), input_types=[input_type]) as graph:
            try:
                with at_candidate_boundary("build graph"), self._tapped(module, seen):
                    module(graph.inputs[0].tensor)
            except CandidateFailure as failure:
                frames = frames_in(self.adapter.source, failure.__cause__)
                where = line_at(self.adapter.source, frames[-1].lineno) if frames else None
                stage = next(s.name for s in self.stages() if s.name not in seen)
                raise _restated(failure, stage=stage, where=where) from failure.__cause__
            graph.output(*[ops.cast(self._reached(seen, s), DType.float32) for s in self.stages()])
        return graph

    def _reached(self, seen: dict[str, TensorValue], stage: Stage) -> TensorValue:
        if stage.name not in seen:
            error = f"sub-module {self.modules[stage.name]!r} was never called"
            raise CandidateFailure(
                Finding(stage.name, "build graph", error, fix="check the adapter's stage map")
            )
        return seen[stage.name]

    @contextmanager
    def _tapped(self, module: Module, seen: dict[str, TensorValue]) -> Iterator[None]:
        """Record each stage's boundary while ``module`` runs: the input of the next stage's
        sub-module, the last stage's own output."""
        stages = self.stages()
        successors = zip(stages, stages[1:], strict=False)
        taps = [(s, self._submodule(module, n), 0) for s, n in successors]
        taps.append((stages[-1], self._submodule(module, stages[-1]), None))

        def hook(layer, args, kwargs, outputs):  # MAX's layer-hook signature
            for stage, tapped, argument in taps:
                if layer is tapped and stage.name not in seen:
                    seen[stage.name] = outputs if argument is None else args[argument]

        add_layer_hook(hook)
        try:
            yield
        finally:
            # MAX 26.7 offers add_layer_hook and clear_hooks (everyone's), but no removal of one
            max_layer._LAYER_HOOKS.remove(hook)

    def _submodule(self, module: Module, stage: Stage) -> Module:
        for part in self.modules[stage.name].split("."):
            module = module.sublayers[part]
        return module

    def stage_of(self, name: str) -> str | None:
        """The first stage whose sub-module is ``name`` or holds it (a weight, an attribute)."""
        for stage in self.stages():
            path = self.modules[stage.name]
            if name == path or name.startswith(path + ".") or path.startswith(name + "."):
                return stage.name
        return None


def _restated(failure: CandidateFailure, **known: str | None) -> CandidateFailure:
    """The same failure with what the harness could tell about it filled in."""
    return CandidateFailure(replace(failure.finding, **{k: v for k, v in known.items() if v}))
