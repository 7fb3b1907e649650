"""Compiling and executing MAX graphs: compile once per shape, bind weights per checkpoint.

Compiling costs about a minute per graph on a 2-core CPU, so every compiled graph is kept by
name for the life of the process, and weights are bound at ``init`` (or ``bind``) time: one
compiled block graph serves every block of every checkpoint of that shape.

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

The model's own graphs are compiled together, as one MAX module per call of
``compile_together`` (a ``Unit``): a compile pays ~14 s before its first kernel and then compiles
every kernel it uses once, however many of its graphs use it. Cold, on 2 cores, tiny's 8 stage
graphs took 78 s as one module and 251 s one by one. The store also indexes each stored graph by
its MLIR (``_digest``), so a graph any process compiled, in whatever unit, is read and bound
through that unit rather than compiled again in another.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from max.driver import CPU, Accelerator, Buffer, accelerator_architecture_name, accelerator_count
from max.dtype import DType
from max.engine import CompiledModel, InferenceSession, Model, read
from max.engine import __version__ as MAX_VERSION
from max.graph import DeviceRef, Graph, Module

from harness.errors import HarnessError
from harness.max_whisper.host_arrays import HostArray, host_array
from harness.max_whisper.layers import Declared, declared_weights
from harness.paths import cache_dir, evict_least_recent, write_text_whole

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


@dataclass(frozen=True)
class GraphSpec:
    """A graph of the model: its name (which encodes its shape), its kind, how to build it into
    a given MAX module, and its recipe (all it is built from; see ``Engine.compile``). Its
    weights are named ``<kind>/<weight>`` (``layers.Scope.of``), so a module's graphs never
    clash, and a graph is the same MLIR in every variant that does not change it."""

    name: str
    kind: str  # its role in its unit (``conv1``, ``step`` ...): weights are ``<kind>/<weight>``
    build: Callable[[Module], Graph]
    recipe: str


@dataclass(frozen=True)
class Unit:
    """One compiled MAX module: per graph (by its name in the module), its kind (its weights'
    namespace) and the weights it declares."""

    compiled: CompiledModel
    kinds: dict[str, str]
    declared: dict[str, dict[str, Declared]]


@dataclass
class Engine:
    """One MAX inference session on one device, with its compiled graphs and compile times.

    ``on_compile(name)`` is called when a graph (or a unit) is really being compiled (after
    ``COMPILE_NOTICE_S``, from a timer thread), ``on_load(name)`` before one is read from the
    store; ``store=None`` keeps no compiled graph beyond MAX's own cache.
    """

    device: str = "cpu"
    dtype: DType = DType.float32
    session: InferenceSession = field(init=False)
    compiled: dict[str, CompiledModel] = field(default_factory=dict, init=False)
    # Seconds per compile or store read: a graph's name, or a unit's names joined by " + ".
    compile_seconds: dict[str, float] = field(default_factory=dict, init=False)
    loaded: set[str] = field(default_factory=set, init=False)  # read from the store
    declared: dict[str, dict[str, Declared]] = field(default_factory=dict, init=False)
    units: dict[str, Unit] = field(default_factory=dict, init=False)  # by graph name
    aliases: dict[str, str] = field(default_factory=dict, init=False)  # to a graph of the same MLIR
    _by_digest: dict[str, tuple[Unit, str]] = field(default_factory=dict, init=False)
    _zeros: dict[Declared, HostArray] = field(default_factory=dict, init=False)
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
        with _claimed(path):
            stored = self._read(path, name) if path else None
            if stored:
                compiled, record = stored
                self.declared[name] = _declared(record)
                self.loaded.add(name)
            else:
                graph = graph or build()
                start = time.perf_counter()
                compiled = self._compile(graph, name)
                self.declared[name] = declared_weights(graph)
                if path:
                    self._write(compiled, _record(self.declared[name]), path)
        self.compiled[name] = compiled
        self.compile_seconds[name] = time.perf_counter() - start
        return compiled

    def init(self, compiled: CompiledModel, weights: Mapping[str, HostArray]) -> Model:
        return self.session.init(compiled, weights_registry=dict(weights))

    def compile_together(self, specs: Iterable[GraphSpec]) -> None:
        """Make the graphs of ``specs`` ready to ``bind``: those not compiled yet become one MAX
        module, read from the store (where a module is known by its graphs' recipes in order:
        callers ask for the same graphs together every time) or compiled.

        Before compiling, each graph is built (~0.02 s); a graph whose MLIR, but for its name,
        is that of a graph already compiled (here, or by any process into the store, in any
        unit), or of another in ``specs``, is bound through that one instead: a planted fault
        changes one or two graphs, and the transcription unit holds graphs that the report's
        stages compiled before.
        """
        todo = list({s.name: s for s in specs if s.name not in self.units}.values())
        if not todo or self._load(todo):
            return
        digests = self._recorded_digests(todo) or {spec.name: _digest(spec) for spec in todo}
        self._adopt_stored(digests)
        fresh, seen = [], set(self._by_digest)
        for spec in todo:
            if digests[spec.name] not in seen:
                seen.add(digests[spec.name])
                fresh.append(spec)
        if fresh:
            self._compile_unit(fresh, digests)
        for spec in todo:
            if spec.name not in self.units:
                self._alias(spec.name, *self._by_digest[digests[spec.name]])
        if (path := self._digests_path(todo)) and not path.is_file():
            write_text_whole(path, json.dumps(digests))

    def _digests_path(self, specs: list[GraphSpec]) -> Path | None:
        """Where the MLIR digests of the graphs of ``specs`` are written down, beside the unit
        file those specs would have: a unit bound through graphs of other stored units has no
        file of its own, and building its graphs to find them again took a new process ~3 s
        (tiny.en's q6_k step graph, whose encoder and selection graphs the report compiled)."""
        path = self._unit_path(specs)
        return path.with_suffix(".digests") if path else None

    def _recorded_digests(self, specs: list[GraphSpec]) -> dict[str, str] | None:
        """The digests ``compile_together`` wrote down for exactly these specs, or None. The
        file is keyed by the specs' recipes (code included), so the graphs are the same."""
        path = self._digests_path(specs)
        try:
            digests = json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            return None
        names = {spec.name for spec in specs}
        return digests if isinstance(digests, dict) and set(digests) == names else None

    def bind(self, name: str, weights: Mapping[str, HostArray]) -> Model:
        """Graph ``name`` (``compile_together``) with ``weights`` by the names it declared."""
        return self.bind_many({name: weights})[name]

    def bind_many(self, requests: Mapping[str, Mapping[str, HostArray]]) -> dict[str, Model]:
        """Graphs by name with their weights, one ``init_all`` per unit for all of them.

        MAX initialises a module's graphs together and refuses a registry that lacks a weight of
        any of them, so a unit's graphs not asked for get zeros of the shapes they declared:
        they are initialised and dropped, never run. Every ``init_all`` takes in the whole
        unit's weights, so binding the five graphs of a transcription one by one paid it five
        times (0.34 s of a first transcript on one core, tiny.en).
        """
        models: dict[str, Model] = {}
        pending = dict(requests)
        while pending:
            unit = self.units[next(iter(pending))]
            batch: dict[str, str] = {}  # graph in the unit -> our name; one name per graph
            for name in pending:
                graph = self.aliases.get(name, name)
                if self.units[name] is unit and graph not in batch:
                    batch[graph] = name
            registry = {
                f"{kind}/{weight}": self._zeros_like(declared)
                for graph, kind in unit.kinds.items()
                if graph not in batch
                for weight, declared in unit.declared[graph].items()
            }
            for graph, name in batch.items():
                kind = unit.kinds[graph]
                registry.update({f"{kind}/{w}": value for w, value in pending[name].items()})
            bound = self.session.init_all(unit.compiled, weights_registry=registry)
            runtime = _runtime_names(unit, list(bound))
            for graph, name in batch.items():
                models[name] = bound[runtime[graph]]
                del pending[name]
        return models

    def _load(self, specs: list[GraphSpec]) -> bool:
        """Read the module of exactly ``specs`` from the store; False when it holds none."""
        path = self._unit_path(specs)
        start = time.perf_counter()
        stored = self._read(path, _notice(specs)) if path else None
        if stored:
            self._add_unit(*stored)
            self.loaded.update(s.name for s in specs)
            self.compile_seconds[_label(specs)] = time.perf_counter() - start
        return stored is not None

    def _alias(self, name: str, unit: Unit, same: str) -> None:
        """Bind graph ``name`` through graph ``same`` of ``unit``, of the same MLIR."""
        self.units[name] = unit
        if same != name:
            self.aliases[name] = same
        self.declared[name] = unit.declared[same]

    def _adopt_stored(self, digests: Mapping[str, str]) -> None:
        """Read the stored units that hold a graph of one of ``digests`` (by name), as far as
        the store's digest index knows one: its graphs become targets to bind through."""
        for name, digest in digests.items():
            if digest in self._by_digest or (index := self._digest_index(digest)) is None:
                continue
            try:
                path = index.parent / index.read_text().strip()
            except OSError:
                continue
            stored = self._read(path, name)
            if stored:
                unit = _unit(*stored)
                for graph, entry in stored[1].items():
                    self._by_digest.setdefault(entry["digest"], (unit, graph))
                if digest in self._by_digest:
                    self.loaded.add(name)

    def _digest_index(self, digest: str) -> Path | None:
        """The store's file naming the unit that holds a graph of MLIR ``digest``."""
        path = self._store_path(f"digest {digest}", "digest")
        return path.with_suffix(".unit") if path else None

    def _compile_unit(self, specs: list[GraphSpec], digests: Mapping[str, str]) -> None:
        """Compile ``specs`` as one module, unless the store has it by the time this process
        holds the unit's claim (another process may have been compiling it)."""
        path = self._unit_path(specs)
        with _claimed(path):
            if not self._load(specs):
                self._compile_new_unit(specs, path, digests)

    def _compile_new_unit(
        self, specs: list[GraphSpec], path: Path | None, digests: Mapping[str, str]
    ) -> None:
        module = Module()
        graphs = [spec.build(module) for spec in specs]
        record = {
            spec.name: {
                "kind": spec.kind,
                "digest": digests[spec.name],
                "weights": _record(declared_weights(graph)),
            }
            for spec, graph in zip(specs, graphs, strict=True)
        }
        start = time.perf_counter()
        compiled = self._compile(module, _notice(specs))
        self.compile_seconds[_label(specs)] = time.perf_counter() - start
        self._add_unit(compiled, record)
        if path:
            self._write(compiled, record, path)
            for graph in record.values():
                if index := self._digest_index(graph["digest"]):
                    write_text_whole(index, path.name)

    def _add_unit(self, compiled: CompiledModel, record: dict[str, dict]) -> None:
        """Register a unit compiled, or read by its recipes, for these very graphs."""
        unit = _unit(compiled, record)
        for name, graph in record.items():
            self.units[name] = unit
            self.declared[name] = unit.declared[name]
            self._by_digest.setdefault(graph["digest"], (unit, name))

    def _unit_path(self, specs: list[GraphSpec]) -> Path | None:
        name = specs[0].name if len(specs) == 1 else f"{specs[0].name}+{len(specs) - 1}"
        return self._store_path(json.dumps([s.recipe for s in specs]), name)

    def _zeros_like(self, declared: Declared) -> HostArray:
        """Zeros for a weight of a graph bound but never run. NumPy's come from calloc, whose
        pages the OS maps on first touch, and MAX does not touch them; ``torch.zeros`` wrote
        every byte. Loading tiny.en's q6_k_top transcription, bound through three stored units
        with 189 weights of graphs it does not run: 0.35-0.40 s against 0.30-0.33 (quiet, 3
        runs each), 120 MB less resident, and 0.26 s saved beside a busy core."""
        if declared not in self._zeros:
            dtype = DType[declared.dtype]
            if dtype == DType.bfloat16:  # bfloat16's zeros are float32's, rounded
                self._zeros[declared] = host_array(np.zeros(declared.shape, np.float32), dtype)
            else:
                self._zeros[declared] = np.zeros(declared.shape, dtype.to_numpy())
        return self._zeros[declared]

    def to_device(self, array: np.ndarray | HostArray) -> Buffer:
        """A buffer on the engine's device; on the CPU a view of ``array`` where it is contiguous.

        NumPy arrays are wrapped as they are, not through DLPack: in a decoding step's loop the
        two small inputs took 0.42 ms as torch tensors and 0.13 ms as NumPy arrays (tiny.en, 2
        cores).
        """
        if isinstance(array, np.ndarray):
            buffer = Buffer.from_numpy(array)
        else:
            buffer = Buffer.from_dlpack(array.contiguous())
        return buffer.to(self.session.devices[0]) if self.device == "gpu" else buffer

    def _compile(self, graph: Graph | Module, name: str) -> CompiledModel:
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
        body = mlir_text(key.module) if isinstance(key, Graph) else key
        target = accelerator_architecture_name() if self.device == "gpu" else "cpu"
        for part in (body, MAX_VERSION, target, host_cpu()):
            digest.update(part.encode())
            digest.update(b"\0")
        return self.store / f"{name}-{digest.hexdigest()[:20]}.mef"

    def _read(self, path: Path, name: str) -> tuple[CompiledModel, dict] | None:
        """The stored artifact and the record of the weights its graphs declare, or None."""
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            return None
        if self.on_load:
            self.on_load(name)
        try:
            record = json.loads(path.with_suffix(".json").read_text())
            compiled = read(path)
        except (RuntimeError, ValueError):  # truncated, not a MEF, not JSON: compiled anew
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # most recently used
        return compiled, record

    def _write(self, compiled: CompiledModel, record: dict, path: Path) -> None:
        """Export atomically, the weights first (readers need both, and never see half a
        file); a store that cannot be written only costs the next process MAX's slower hit."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path.with_suffix(".json"))
            compiled.export_mef(tmp)
            os.replace(tmp, path)
            _evict(path.parent, STORE_LIMIT_BYTES)
        except OSError:
            tmp.unlink(missing_ok=True)


def _unit(compiled: CompiledModel, record: Mapping[str, dict]) -> Unit:
    kinds = {name: graph["kind"] for name, graph in record.items()}
    declared = {name: _declared(graph["weights"]) for name, graph in record.items()}
    return Unit(compiled, kinds, declared)


def _runtime_names(unit: Unit, runtime: list[str]) -> dict[str, str]:
    """Our name of each of ``unit``'s graphs -> the name MAX gave its model, graph by graph in
    order. MAX 26.7's compile cache knows a module by its body, not its graphs' names: a unit
    compiled before under other names (by a process whose store entry is gone) comes back with
    those."""
    if len(runtime) != len(unit.kinds):
        raise HarnessError(f"MAX returned {len(runtime)} models for a unit of {len(unit.kinds)}")
    return dict(zip(unit.kinds, runtime, strict=True))


def _record(declared: Mapping[str, Declared]) -> dict[str, list]:
    return {name: weight.to_json() for name, weight in declared.items()}


def _declared(record: Mapping[str, list]) -> dict[str, Declared]:
    return {name: Declared.from_json(value) for name, value in record.items()}


_COUNTER = re.compile(r"\{counter = \d+ : i64\}")


def _label(specs: list[GraphSpec]) -> str:
    """A unit's name in ``compile_seconds``: its graphs' names joined by " + "."""
    return " + ".join(s.name for s in specs)


def _notice(specs: list[GraphSpec]) -> str:
    """A unit's name in progress lines: its first graph's name, then the others' kinds."""
    return ", ".join([specs[0].name, *(s.kind for s in specs[1:])])


def _digest(spec: GraphSpec) -> str:
    """The MLIR of the graph of ``spec`` and of the subgraphs it calls, but for its name: equal
    for graphs that compute the same thing.

    The graph is built into a module of its own, whose text holds the bodies of its subgraphs:
    a graph's own text names a subgraph it calls, not what that computes, so a fused encoder
    whose block differed (an experiment with quantised encoder weights) read as the faithful
    one's and was bound through it. MAX 26.7 ends a graph with a ``{counter = N : i64}``
    attribute that differs between two builds of the same graph in one process (80 on a fresh
    build of tiny's encoder block, 96 on a later one), so it is left out."""
    module = Module()
    spec.build(module)
    text = mlir_text(module).replace(f"mo.graph @{spec.name}", "mo.graph @", 1)
    return hashlib.sha256(_COUNTER.sub("", text).encode()).hexdigest()


def mlir_text(module: Module) -> str:
    """``str(module.mlir_module)``, the same text (graphs stored before are found by it), but
    not verified first: the graphs were verified when built (``Graph.output``).

    ``str()`` verifies the module before printing it, and MAX 26.7 verifies on its runtime's
    threads while the printing thread keeps the GIL. A cold CI run hung there for 10 minutes
    (test_first_transcript.py, 2026-12-05): the main thread in ``str()`` of a module, waiting
    on a semaphore in libKGENCompilerRTShared, and the runtime's thread ``🔥 Thread0`` waiting
    for the GIL in ``PyGILState_Ensure``. Printing a 40-graph module in a loop while another
    thread executed a model hung the same way in 1 of 13 runs of ``str()`` and in none of 11
    of this: thin evidence alone; what this skips is the verification, where the wait was.
    """
    return f"ModuleOp({module.mlir_module.asm(assume_verified=True)})"


@contextmanager
def _claimed(path: Path | None) -> Iterator[None]:
    """Hold the claim to compile the graph (or unit) stored at ``path``: a second process
    asking for the same graph meanwhile (``make test`` runs two test files at a time) waits,
    then reads it from the store instead of compiling it again. No store, no claim."""
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        claim = path.with_suffix(".lock").open("a")
    except OSError:  # a store that cannot be written: compile unclaimed, as without one
        yield
        return
    with claim:
        fcntl.flock(claim, fcntl.LOCK_EX)
        yield


def _evict(store: Path, limit: int) -> None:
    """Drop the least recently used units beyond ``limit`` bytes, with their records and the
    digest index entries that name them (else each would cost a failed read to ask again)."""
    evicted = {path.name for path in evict_least_recent(store.glob("*.mef"), limit)}
    for name in evicted:
        (store / name).with_suffix(".json").unlink(missing_ok=True)
        (store / name).with_suffix(".lock").unlink(missing_ok=True)
    for index in store.glob("*.unit") if evicted else ():
        with contextlib.suppress(OSError):
            if index.read_text().strip() in evicted:
                index.unlink()


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
