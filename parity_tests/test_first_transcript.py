"""Time to first transcript (harness/speed/first_transcript.py) and what it rests on.

A new process per file: compiled graphs are kept across processes (the engine's store of MEF
files), a compile is announced only when it is one, the checkpoint is validated without building
modules on the meta device, and ``transcribe`` imports none of the report machinery.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import whisper
from max.dtype import DType
from max.graph import DeviceRef, Graph, Module, TensorType, ops
from whisper.model import AudioEncoder, TextDecoder

from harness import cli, openai_whisper
from harness.errors import HarnessError
from harness.inputs import checkpoints
from harness.inputs.audio import load_audio
from harness.inputs.synthetic import official_dims
from harness.inputs.validation import expected_shapes
from harness.max_whisper import engine as engine_module
from harness.max_whisper.engine import Engine, GraphSpec, to_numpy
from harness.max_whisper.layers import Declared, Scope
from harness.max_whisper.mel import MaxLogMel, hann_window
from harness.max_whisper.parts import MaxParts
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.paths import REPO
from harness.pipeline.transcribe import transcribe
from harness.speed import first_transcript

SHORT = REPO / "fixtures" / "audio" / "short.wav"


def test_torch_backend_first_transcript_is_the_transcript(load_checkpoint):
    command = first_transcript.harness_command("torch", "fixture:speech", SHORT)
    run = first_transcript.first_transcript(command)
    expected = transcribe(load_checkpoint("fixture:speech").model, load_audio(SHORT), language=None)
    assert run.text == expected.text.strip() and run.text
    assert 0 < run.seconds < 120


def test_measure_alternates_commands_and_keeps_every_run(tmp_path):
    log = "import sys; open(sys.argv[1], 'a').write(sys.argv[2]); print('text', sys.argv[2][0])"
    order = tmp_path / "order"
    commands = {name: [sys.executable, "-c", log, str(order), name] for name in ("a1", "b2")}
    timings = first_transcript.measure(commands, runs=2)
    assert order.read_text() == "a1b2" + "a1b2" * 2  # the untimed round, then in turn
    assert timings["a1"].text == "text a" and timings["b2"].text == "text b"
    assert all(len(t.runs) == 2 and min(t.runs) > 0 and t.warmup for t in timings.values())
    assert "| a1 |" in first_transcript.table(timings)


def test_a_failing_or_changing_command_is_an_error_not_a_time():
    failing = [sys.executable, "-c", "import sys; sys.exit('no model here')"]
    with pytest.raises(HarnessError, match="exited 1: no model here"):
        first_transcript.first_transcript(failing)
    changing = [sys.executable, "-c", "import time; print(time.time_ns())"]
    with pytest.raises(HarnessError, match="changed between runs"):
        first_transcript.measure({"clock": changing}, runs=2)
    with pytest.raises(HarnessError, match="unknown backend"):
        first_transcript.harness_command("onnx", "tiny.en", SHORT)


def test_transcribe_imports_none_of_the_report_machinery():
    code = (
        "import sys; from harness import cli; cli._transcribe_parser(); "
        "heavy = ('pandas', 'matplotlib', 'harness.report.plots'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_lazily_imported_modules_are_the_modules():
    code = (
        "import harness.cli, harness.report.build as b, harness.max_whisper.whisper as w; "
        "print(harness.cli.report.build is b.build, callable(harness.cli.faults.run), "
        "harness.cli.max_model.MaxWhisper is w.MaxWhisper)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr


def test_pytorchs_transcribe_of_a_wav_imports_neither_max_nor_pyav():
    """PyTorch's first transcript must not pay for importing MAX (~0.15 s), nor a WAV's for
    PyAV (~0.12 s; ``av`` itself is a lazy stand-in until used, ``av._core`` the real one)."""
    code = (
        "import sys; from harness import cli; "
        f"code = cli.main(['transcribe', '{SHORT}', '--backend', 'torch', "
        "'--model', 'fixture:speech']); "
        "print('max' in sys.modules, 'av._core' in sys.modules, code, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stderr.split()[-3:] == ["False", "False", "0"], result.stderr
    assert result.stdout.strip()


def test_weights_with_the_pytorch_backend_is_one_line_error():
    command = [sys.executable, "-m", "harness", "transcribe", str(SHORT), "--backend", "torch"]
    result = subprocess.run(
        [*command, "--weights", "q6_k"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --weights q6_k: MAX's decoding weights; use --backend max"
    ]


@pytest.mark.parametrize("name", ["tiny.en", "base", "large-v3", "turbo"])
def test_expected_shapes_are_openai_whispers_own(name):
    """``expected_shapes`` spells out the state dict; this is the module tree it stands for."""
    dims = official_dims(name)
    with torch.device("meta"):
        halves = {
            "encoder": AudioEncoder(
                dims.n_mels,
                dims.n_audio_ctx,
                dims.n_audio_state,
                dims.n_audio_head,
                dims.n_audio_layer,
            ),
            "decoder": TextDecoder(
                dims.n_vocab,
                dims.n_text_ctx,
                dims.n_text_state,
                dims.n_text_head,
                dims.n_text_layer,
            ),
        }
    reference = [
        (f"{half}.{key}", tensor.shape)
        for half, module in halves.items()
        for key, tensor in module.state_dict().items()
    ]
    assert list(expected_shapes(dims).items()) == reference


def test_compiled_graphs_are_read_back_by_a_new_engine(tmp_path):
    audio = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    first = Engine(store=tmp_path)
    expected = MaxLogMel(80, first)(audio)
    (path,) = tmp_path.glob("*.mef")
    assert not first.loaded

    events: list[tuple[str, str]] = []
    second = Engine(
        store=tmp_path,
        on_compile=lambda name: events.append(("compile", name)),
        on_load=lambda name: events.append(("load", name)),
    )
    mel = MaxLogMel(80, second)
    np.testing.assert_array_equal(mel(audio), expected)
    assert events == [("load", mel.graph_name)] and second.loaded == {mel.graph_name}

    path.write_bytes(b"not a MEF")  # a damaged file is compiled anew and rewritten
    third = Engine(store=tmp_path)
    np.testing.assert_array_equal(MaxLogMel(80, third)(audio), expected)
    assert not third.loaded and path.stat().st_size > 1000


def test_a_stored_graph_known_by_its_recipe_is_not_built_again(tmp_path, load_checkpoint):
    checkpoint = load_checkpoint("synthetic:tiny")
    first = Engine(store=tmp_path)
    built = MaxTextDecoder(checkpoint.dims, checkpoint.state_dict(), first)
    built.model("ln", "decoder.")
    second = Engine(store=tmp_path)
    stored = MaxTextDecoder(checkpoint.dims, checkpoint.state_dict(), second)
    stored.graph = None  # building a graph would fail: it must come from the store
    stored.model("ln", "decoder.")
    name = built.graph_name("ln")
    unit = {built.graph_name(kind) for kind in ("embed", "block", "ln", "logits")}
    assert not first.loaded and second.loaded == unit  # compiled, and read back, together
    n_state = checkpoint.dims.n_text_state
    expected = {
        "ln.weight": Declared((n_state,), "float32"),
        "ln.bias": Declared((n_state,), "float32"),
    }
    assert first.declared[name] == second.declared[name] == expected


def test_a_recipe_names_every_dim_and_variant_field(load_checkpoint):
    checkpoint = load_checkpoint("synthetic:tiny")
    recipes = {
        MaxTextDecoder(checkpoint.dims, checkpoint.state_dict(), Engine(store=None), v).recipe("ln")
        for v in (FAITHFUL, Variant(layer_norm_eps=1e-6), Variant(key_bias=True))
    }
    assert len(recipes) == 3


def _graph(name: str, scale: float) -> Graph:
    with Graph(name, input_types=[TensorType(DType.float32, [3], DeviceRef.CPU())]) as graph:
        graph.output(graph.inputs[0].tensor * scale)
    return graph


def _weighted(name: str, kind: str, twice: bool = False) -> GraphSpec:
    """x * w, or x * w * 2: a graph with one weight, ``w``."""

    def build(module: Module) -> Graph:
        scope = Scope.of(kind, DType.float32, DeviceRef.CPU(), FAITHFUL)
        input_types = [TensorType(DType.float32, [3], DeviceRef.CPU())]
        with Graph(name, input_types=input_types, module=module) as graph:
            x = graph.inputs[0].tensor * scope.weight("w", [3])
            graph.output(x * 2.0 if twice else x)
        return graph

    return GraphSpec(name, kind, build, recipe=f"{name} {kind} {twice}")


def test_a_unit_binds_each_of_its_graphs_and_a_graph_of_the_same_mlir_through_it(tmp_path):
    engine = Engine(store=tmp_path)
    x, w = np.arange(3, dtype=np.float32), torch.tensor([1.0, 2.0, 3.0])

    def run(name: str) -> np.ndarray:
        return to_numpy(engine.bind(name, {"w": w}).execute(engine.to_device(x))[0])

    engine.compile_together([_weighted("a", "scale"), _weighted("b", "twice", twice=True)])
    c, c_twin = _weighted("c", "scale", twice=True), _weighted("c_twin", "scale", twice=True)
    engine.compile_together([_weighted("a_again", "scale"), c, c_twin])
    assert list(engine.compile_seconds) == ["a + b", "c"]
    assert engine.aliases == {"a_again": "a", "c_twin": "c"}
    np.testing.assert_array_equal(run("a"), x * w.numpy())
    np.testing.assert_array_equal(run("a_again"), x * w.numpy())
    np.testing.assert_array_equal(run("b"), 2 * x * w.numpy())
    np.testing.assert_array_equal(run("c"), 2 * x * w.numpy())
    np.testing.assert_array_equal(run("c_twin"), 2 * x * w.numpy())
    again = Engine(store=tmp_path)
    again.compile_together([_weighted("a", "scale"), _weighted("b", "twice", twice=True)])
    assert again.loaded == {"a", "b"}


def _calling(name: str, factor: float) -> GraphSpec:
    """x * factor, computed in a subgraph: the graph's own MLIR names the call only."""

    def build(module: Module) -> Graph:
        input_type = TensorType(DType.float32, [3], DeviceRef.CPU())
        with Graph(name, input_types=[input_type], module=module) as graph:
            inner = graph.add_subgraph("scale", input_types=[input_type])
            with inner:
                inner.output(inner.inputs[0].tensor * factor)
            graph.output(ops.call(inner, graph.inputs[0].tensor)[0].tensor)
        return graph

    return GraphSpec(name, "calling", build, recipe=f"{name} {factor}")


def test_graphs_that_differ_inside_a_subgraph_are_not_bound_through_one_another(tmp_path):
    """The fused encoder calls its block as a subgraph: one whose block differs (quantised
    weights, a planted fault) must not be taken for the faithful one (it was)."""
    engine = Engine(store=tmp_path)
    engine.compile_together([_calling("twice", 2.0)])
    engine.compile_together([_calling("thrice", 3.0)])
    assert engine.aliases == {}
    x = np.arange(3, dtype=np.float32)
    for name, factor in (("twice", 2), ("thrice", 3)):
        out = to_numpy(engine.bind(name, {}).execute(engine.to_device(x))[0])
        np.testing.assert_array_equal(out, factor * x)


def test_mlir_text_is_strs_text_so_stored_graphs_keep_their_digests():
    """``engine.mlir_text`` prints without str()'s verification (a deadlock in MAX 26.7), and
    must not change a byte: every stored graph is found by a digest of that text."""
    for spec in (_calling("twice", 2.0), _weighted("one", "scale")):
        module = Module()
        spec.build(module)
        assert engine_module.mlir_text(module) == str(module.mlir_module)


def test_a_graph_another_process_compiled_in_another_unit_is_bound_through_it(tmp_path):
    """The report compiles the encoder with its stages; ``transcribe`` asks for it again in the
    transcription unit: only the graphs no stored unit holds are compiled."""
    Engine(store=tmp_path).compile_together(
        [_weighted("a", "scale"), _weighted("b", "twice", True)]
    )
    engine = Engine(store=tmp_path)
    engine.compile_together([_weighted("a_copy", "scale"), _weighted("d", "other", twice=True)])
    assert list(engine.compile_seconds) == ["d"] and "a_copy" in engine.loaded
    x, w = np.arange(3, dtype=np.float32), torch.tensor([1.0, 2.0, 3.0])
    for name, factor in (("a_copy", 1), ("d", 2)):
        out = to_numpy(engine.bind(name, {"w": w}).execute(engine.to_device(x))[0])
        np.testing.assert_array_equal(out, factor * x * w.numpy())


def test_a_unit_bound_through_stored_units_is_not_built_again(tmp_path):
    """The second time, a new process knows the graphs' digests from the store: it binds the
    unit through the stored graphs without building one (a build would raise here)."""
    Engine(store=tmp_path).compile_together([_weighted("a", "scale"), _weighted("d", "other")])
    Engine(store=tmp_path).compile_together([_weighted("a_copy", "scale"), _weighted("d", "other")])

    def unbuildable(name: str, kind: str) -> GraphSpec:
        spec = _weighted(name, kind)
        return replace(spec, build=lambda module: pytest.fail(f"{name} was built"))

    engine = Engine(store=tmp_path)
    engine.compile_together([unbuildable("a_copy", "scale"), unbuildable("d", "other")])
    assert "a_copy" in engine.loaded and not engine.compile_seconds
    x, w = np.arange(3, dtype=np.float32), torch.tensor([1.0, 2.0, 3.0])
    out = to_numpy(engine.bind("a_copy", {"w": w}).execute(engine.to_device(x))[0])
    np.testing.assert_array_equal(out, x * w.numpy())


def test_a_unit_max_compiled_before_under_other_names_is_bound_by_ours(tmp_path):
    """MAX 26.7's compile cache knows a module by its body, not its graphs' names: compiled again
    under new names (here a store that lost the first unit, as eviction leaves it), it comes back
    with the old ones, and ``init_all`` keys the models by those."""
    x, w = np.arange(3, dtype=np.float32), torch.tensor([1.0, 2.0, 3.0])
    old = [_weighted("old_one", "scale"), _weighted("old_twice", "twice", twice=True)]
    Engine(store=tmp_path / "first").compile_together(old)
    engine = Engine(store=tmp_path / "second")
    engine.compile_together([_weighted("one", "scale"), _weighted("twice", "twice", twice=True)])
    for name, factor in (("one", 1), ("twice", 2)):
        out = to_numpy(engine.bind(name, {"w": w}).execute(engine.to_device(x))[0])
        np.testing.assert_array_equal(out, factor * x * w.numpy())


def test_graphs_of_one_unit_bound_together_take_one_init_and_their_own_weights(tmp_path):
    """``init_all`` takes in every graph of a unit, so a transcription's five graphs bound one
    by one paid it five times (0.34 s of a first transcript on one core, tiny.en)."""
    engine = Engine(store=tmp_path)
    engine.compile_together([_weighted("one", "scale"), _weighted("twice", "twice", twice=True)])
    calls: list[int] = []
    init_all = engine.session.init_all

    class Counting:
        def init_all(self, *args, **kwargs):
            calls.append(1)
            return init_all(*args, **kwargs)

    engine.session = Counting()
    x = np.arange(3, dtype=np.float32)
    w_one, w_twice = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 7.0, 11.0])
    models = engine.bind_many({"one": {"w": w_one}, "twice": {"w": w_twice}})
    assert len(calls) == 1
    for name, expected in (("one", x * w_one.numpy()), ("twice", 2 * x * w_twice.numpy())):
        out = to_numpy(models[name].execute(engine.to_device(x))[0])
        np.testing.assert_array_equal(out, expected)


def test_the_store_tells_graphs_apart_by_their_whole_body(tmp_path):
    engine = Engine(store=tmp_path)
    one, same, other = _graph("g", 2.0), _graph("g", 2.0), _graph("g", 3.0)
    assert engine._store_path(one, "g") == engine._store_path(same, "g")
    assert engine._store_path(one, "g") != engine._store_path(other, "g")
    assert Engine(store=None)._store_path(one, "g") is None


def test_least_recently_used_graphs_leave_a_full_store(tmp_path):
    for age, name in enumerate(["new", "middle", "old"]):
        path = tmp_path / f"{name}.mef"
        path.write_bytes(b"x" * 100)
        stamp = time.time() - 100 * age
        os.utime(path, (stamp, stamp))
    (tmp_path / "old.json").write_text("{}")
    for digest, unit in (("a", "old.mef"), ("b", "new.mef")):  # the digest index
        (tmp_path / f"{digest}.unit").write_text(unit)
    engine_module._evict(tmp_path, 250)
    assert sorted(p.stem for p in tmp_path.glob("*.mef")) == ["middle", "new"]
    assert not (tmp_path / "old.json").exists()
    assert [p.stem for p in tmp_path.glob("*.unit")] == ["b"]  # none names a unit not there


class _SlowSession:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def compile(self, graph: Graph) -> str:
        time.sleep(self.seconds)
        return "compiled"


@pytest.mark.parametrize(("notice_s", "announced"), [(0.05, True), (5.0, False)])
def test_compiling_is_announced_only_when_it_outlasts_a_cache_hit(monkeypatch, notice_s, announced):
    monkeypatch.setattr(engine_module, "COMPILE_NOTICE_S", notice_s)
    events: list[str] = []
    engine = Engine(store=None, on_compile=events.append)
    engine.session = _SlowSession(0.3)
    assert engine.compile(lambda: _graph("g", 2.0), "g") == "compiled"
    assert events == (["g"] if announced else [])


def test_a_unit_another_process_is_compiling_is_waited_for_and_read_not_compiled(tmp_path):
    """``make test`` runs two files at a time: the second to ask for a unit reads the first's."""
    specs = [_weighted("a", "scale"), _weighted("b", "twice", twice=True)]
    made, second = Engine(store=tmp_path / "made"), Engine(store=tmp_path / "shared")
    made.compile_together(specs)
    path = second._unit_path(specs)
    path.parent.mkdir()

    def other_process() -> None:  # claims the unit, compiles it (0.5 s here), stores it
        with path.with_suffix(".lock").open("a") as claim:
            fcntl.flock(claim, fcntl.LOCK_EX)
            claimed.set()
            time.sleep(0.5)
            for suffix in (".json", ".mef"):
                shutil.copy(made._unit_path(specs).with_suffix(suffix), path.with_suffix(suffix))

    claimed = threading.Event()
    threading.Thread(target=other_process).start()
    claimed.wait()
    start = time.perf_counter()
    second.compile_together(specs)
    assert time.perf_counter() - start >= 0.5  # it waited for the claim
    assert second.loaded == {"a", "b"}  # and read the unit from the store


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8"])
def test_zeros_for_a_graph_bound_but_not_run_are_the_declared_weight(tmp_path, dtype):
    """Made from calloc'd bytes (``Engine._zeros_like``), viewed as any dtype MAX declares."""
    zeros = Engine(store=tmp_path)._zeros_like(Declared((3, 5), dtype))
    assert str(zeros.dtype).removeprefix("torch.") == dtype and tuple(zeros.shape) == (3, 5)
    assert not zeros.any()


def test_what_is_read_of_openai_whisper_without_importing_it_is_openai_whispers():
    """``harness.openai_whisper`` and ``mel.hann_window`` stand in for openai-whisper's own
    values on the MAX path, which imports neither openai-whisper nor PyTorch."""
    for name in ("SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "CHUNK_LENGTH", "N_SAMPLES", "N_FRAMES"):
        assert getattr(openai_whisper, name) == getattr(whisper.audio, name), name
    ours, theirs = fields(openai_whisper.ModelDimensions), fields(whisper.model.ModelDimensions)
    assert [f.name for f in ours] == [f.name for f in theirs]
    for name in ("tiny.en", "base"):
        dims = official_dims(name)
        assert openai_whisper.is_multilingual(dims) == whisper.model.Whisper.is_multilingual.fget(
            SimpleNamespace(dims=dims)
        )
    for n_mels in (80, 128):
        expected = whisper.audio.mel_filters("cpu", n_mels).numpy()
        assert np.array_equal(openai_whisper.mel_filters(n_mels), expected)
    window = torch.hann_window(openai_whisper.N_FFT).numpy()
    assert np.array_equal(hann_window(), window) and np.array_equal(hann_window(), window)


def test_a_checkpoint_is_remembered_while_its_file_is_unchanged(
    tmp_path, monkeypatch, load_checkpoint
):
    """``checkpoints.remembered``: what a spec resolved to last time, read without PyTorch, and
    nothing once the file changed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "model.pt"
    shutil.copy(load_checkpoint("fixture:speech").path, path)
    spec = str(path)
    assert checkpoints.remembered(spec) is None
    loaded = checkpoints.load(spec)
    again = checkpoints.remembered(spec)
    assert (again.path, again.identity, again.dims) == (loaded.path, loaded.identity, loaded.dims)
    embedding = "decoder.token_embedding.weight"
    assert isinstance(again.arrays()[embedding], np.ndarray)
    assert np.array_equal(again.arrays()[embedding], loaded.state_dict()[embedding].numpy())
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert checkpoints.remembered(spec) is None


def test_the_max_model_starts_a_transcription_without_pytorch(load_checkpoint):
    """What ``harness.cli`` starts before importing PyTorch: the remembered checkpoint's graphs
    bound, the log-mel and the first window's encoding, in a process where neither PyTorch nor
    openai-whisper (nor numba, which it imports) is ever loaded."""
    load_checkpoint("tiny.en")  # resolved once: remembered
    code = (
        "import sys\n"
        "from harness.inputs import checkpoints\n"
        "from harness.inputs.audio import load_audio\n"
        "from harness.max_whisper.engine import Engine\n"
        "from harness.max_whisper.parts import MaxParts\n"
        "parts = MaxParts(checkpoints.remembered('tiny.en'), Engine())\n"
        f"parts.start(load_audio('{SHORT}'))\n"
        "features = parts.started.encodings[-1][1].result()\n"
        "heavy = ('torch', 'whisper', 'numba')\n"
        "print(features.shape, [m for m in heavy if type(sys.modules.get(m)).__name__ == 'module'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "(1, 1500, 384) []", result.stderr


def test_transcribe_starts_again_when_the_checkpoint_resolves_to_another_file(
    load_checkpoint, monkeypatch, capsys
):
    """The CLI starts MAX on the file ``tiny.en`` resolved to last time; when resolving it now
    gives another file, that start is dropped and the transcript is the new file's."""
    expected = cli.pipeline.transcribe(load_checkpoint("tiny.en").model, load_audio(SHORT))
    stale = load_checkpoint("fixture:speech")
    started = []
    monkeypatch.setattr(checkpoints, "remembered", lambda spec: stale)
    monkeypatch.setattr(MaxParts, "start", lambda self, audio, **how: started.append(self.identity))
    assert cli.main(["transcribe", str(SHORT), "--model", "tiny.en", "--language", "en"]) == 0
    assert started == [stale.identity]
    assert capsys.readouterr().out.strip() == expected.text.strip()
