"""Compiling and executing MAX graphs: compile once per shape, bind weights per checkpoint.

Compiling costs about a minute per graph on a 2-core CPU, so every compiled graph is kept by
name for the life of the process, and weights are bound at ``init`` time: one compiled block
graph serves every block of every checkpoint of that shape.

Across processes, compiled graphs are kept in a store of MEF files (MAX's compiled-model format:
``CompiledModel.export_mef`` writes one, ``max.engine.read`` reads it back). MAX's own disk cache
also spares a recompile, but on this CPU ``session.compile`` still spent 1.7–4.8 s per graph on a
cache hit (four graphs before the first word of a transcript), where reading the MEF back and
binding its weights took 0.01–0.09 s. A graph's file is named after a hash of MAX's version,
the device, the host CPU and either the graph's whole MLIR module (subgraphs included) or, for
the model's own graphs, its recipe: the code of ``max_whisper/`` and the stage table, the
graph's name, dims and variant (``BoundGraphs.recipe``), which spares building the graph at all.
A changed graph, a new MAX or another machine never reads a stale artifact; one that fails to
read is compiled anew. The weights a graph declares are kept beside it (``.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from max.driver import CPU, Accelerator, Buffer, accelerator_architecture_name, accelerator_count
from max.dtype import DType
from max.engine import CompiledModel, InferenceSession, Model, read
from max.engine import __version__ as MAX_VERSION
from max.graph import DeviceRef, Graph

from harness.errors import HarnessError
from harness.max_whisper.layers import Declared, declared_weights
from harness.paths import cache_dir, evict_least_recent

TORCH_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16}
DTYPES = {"float32": DType.float32, "bfloat16": DType.bfloat16}
# A compile that has not finished after this long is a real one: a hit in MAX's own cache took
# 1.7-4.8 s here (two busy cores), a real compile 40 s or more.
COMPILE_NOTICE_S = 10.0
STORE_LIMIT_BYTES = 1 << 30  # least recently used graphs are dropped beyond this


def compiled_store() -> Path:
    """Where compiled graphs are kept: next to MAX's own cache when ``MODULAR_DERIVED_PATH``
    moves it (so an empty MAX cache is an empty store), else ``~/.cache/max-whisper/compiled``."""
    derived = os.getenv("MODULAR_DERIVED_PATH")
    if derived:
        return Path(derived) / "max-whisper-compiled"
    return cache_dir() / "max-whisper" / "compiled"


@dataclass
class Engine:
    """One MAX inference session on one device, with its compiled graphs and compile times.

    ``on_compile(name)`` is called when a graph is really being compiled (after
    ``COMPILE_NOTICE_S``, from a timer thread), ``on_load(name)`` before one is read from the
    store; ``store=None`` keeps no compiled graph beyond MAX's own cache.
    """

    device: str = "cpu"
    dtype: DType = DType.float32
    session: InferenceSession = field(init=False)
    compiled: dict[str, CompiledModel] = field(default_factory=dict, init=False)
    compile_seconds: dict[str, float] = field(default_factory=dict, init=False)
    loaded: set[str] = field(default_factory=set, init=False)  # read from the store
    declared: dict[str, dict[str, Declared]] = field(default_factory=dict, init=False)
    on_compile: Callable[[str], None] | None = None
    on_load: Callable[[str], None] | None = None
    store: Path | None = field(default_factory=compiled_store)

    def __post_init__(self) -> None:
        if self.device == "gpu":
            if accelerator_count() == 0:
                raise HarnessError("--device gpu: MAX sees no accelerator on this machine")
            self.session = InferenceSession(devices=[Accelerator()])
        else:
            self.session = InferenceSession(devices=[CPU()])

    @property
    def device_ref(self) -> DeviceRef:
        return DeviceRef.GPU() if self.device == "gpu" else DeviceRef.CPU()

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    def compile(
        self, build: Callable[[], Graph], name: str, recipe: str | None = None
    ) -> CompiledModel:
        """Compile the graph ``build()`` returns, once per ``name`` (which encodes its shape),
        or read it from the store when this very graph was compiled before.

        The store knows a graph by ``recipe`` when the caller gives one: a string naming all the
        graph is built from (its code, dims, variant), so that a hit builds nothing; building
        took 0.3-1.3 s a graph here, most of a warm first transcript's load. Without a recipe,
        by a hash of the graph's MLIR, which means building it first. Either way
        ``declared[name]`` holds the weights the graph declares.
        """
        if name in self.compiled:
            return self.compiled[name]
        graph = None if recipe else build()
        start = time.perf_counter()
        path = self._store_path(recipe or graph, name)
        compiled = self._read(path, name) if path else None
        if compiled is None:
            graph = graph or build()
            start = time.perf_counter()
            compiled = self._compile(graph, name)
            self.declared[name] = declared_weights(graph)
            if path:
                self._write(compiled, self.declared[name], path)
        self.compiled[name] = compiled
        self.compile_seconds[name] = time.perf_counter() - start
        return compiled

    def init(self, compiled: CompiledModel, weights: Mapping[str, torch.Tensor]) -> Model:
        return self.session.init(compiled, weights_registry=dict(weights))

    def to_device(self, array: np.ndarray | torch.Tensor) -> Buffer:
        """A buffer on the engine's device; on the CPU a view of ``array`` where it is contiguous.

        NumPy arrays are wrapped as they are, not through a torch tensor: in a decoding step's
        loop the two small inputs took 0.42 ms that way and 0.13 ms directly (tiny.en, 2 cores).
        """
        if isinstance(array, np.ndarray):
            buffer = Buffer.from_numpy(array)
        else:
            buffer = Buffer.from_dlpack(array.contiguous())
        return buffer.to(self.session.devices[0]) if self.device == "gpu" else buffer

    def _compile(self, graph: Graph, name: str) -> CompiledModel:
        """``session.compile``, saying so when it is a real compile, not a hit in MAX's cache."""
        notice = threading.Timer(COMPILE_NOTICE_S, self.on_compile, [name])
        notice.daemon = True
        if self.on_compile:
            notice.start()
        try:
            return self.session.compile(graph)
        finally:
            notice.cancel()

    def _store_path(self, key: Graph | str, name: str) -> Path | None:
        """The graph's file: its name and a hash of ``key`` (a recipe, or the graph's MLIR),
        MAX's version, the device and the host CPU. Beside it, ``.json``: its weights."""
        if self.store is None:
            return None
        digest = hashlib.sha256()
        body = str(key.module.mlir_module) if isinstance(key, Graph) else key
        target = accelerator_architecture_name() if self.device == "gpu" else "cpu"
        for part in (body, MAX_VERSION, target, host_cpu()):
            digest.update(part.encode())
            digest.update(b"\0")
        return self.store / f"{name}-{digest.hexdigest()[:20]}.mef"

    def _read(self, path: Path, name: str) -> CompiledModel | None:
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            return None
        if self.on_load:
            self.on_load(name)
        try:
            declared = json.loads(path.with_suffix(".json").read_text())
            compiled = read(path)
        except (RuntimeError, ValueError):  # truncated, not a MEF, not JSON: compiled anew
            path.unlink(missing_ok=True)
            return None
        self.declared[name] = {k: Declared.from_json(v) for k, v in declared.items()}
        self.loaded.add(name)
        os.utime(path)  # most recently used
        return compiled

    def _write(self, compiled: CompiledModel, declared: dict[str, Declared], path: Path) -> None:
        """Export atomically, the weights first (readers need both, and never see half a
        file); a store that cannot be written only costs the next process MAX's slower hit."""
        record = json.dumps({k: v.to_json() for k, v in declared.items()})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(record)
            os.replace(tmp, path.with_suffix(".json"))
            compiled.export_mef(tmp)
            os.replace(tmp, path)
            _evict(path.parent, STORE_LIMIT_BYTES)
        except OSError:
            tmp.unlink(missing_ok=True)


def _evict(store: Path, limit: int) -> None:
    """Drop the least recently used graphs, and their weights, beyond ``limit`` bytes."""
    for path in evict_least_recent(store.glob("*.mef"), limit):
        path.with_suffix(".json").unlink(missing_ok=True)


@cache
def host_cpu() -> str:
    """The host CPU's model and feature flags: MAX compiles for the CPU it runs on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    first = info.split("\n\n", 1)[0]
    keep = ("model name", "flags", "Features", "CPU part")
    return "\n".join(line for line in first.splitlines() if line.startswith(keep))


def to_numpy(buffer: Buffer) -> np.ndarray:
    """A float32 host copy of a graph output (graphs return float32 whatever their dtype)."""
    return buffer.to(CPU()).to_numpy() if not buffer.device.is_host else buffer.to_numpy()
