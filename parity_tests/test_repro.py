"""``python -m harness repro``: every detected planted fault handed over as a folder whose
repro.py, run with only max and numpy importable, fails with the metrics ``faults`` reports for
that stage; the faithful port's passes; the fused-attention mask bug of MAX 26.7 stays reproduced.

Each repro graph is a cold compile the first time (about a minute here), a hit in MAX's cache
after; the harness's own stage graphs are the ones ``test_faults.py`` compiles.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from harness import cli
from harness.child_process import child_env
from harness.compare.metrics import compare
from harness.compare.verdict import verdict
from harness.faults.catalogue import CATALOGUE, CONTROL, MAX_BUGS
from harness.faults.findings import run_faults
from harness.faults.reference_trace import trace_reference
from harness.max_whisper.variant import Variant
from harness.paths import FIXTURES
from harness.report.markdown import markdown
from harness.repro import folder, report_hook, script
from harness.repro.case import find_check
from harness.repro.handover import hand_over
from harness.repro.minimise import smallest

MODEL = "synthetic:tiny"
PORTING = [f for f in CATALOGUE if f.expected_stage]
DETECTED = [*PORTING, *MAX_BUGS]
FAITHFUL_STAGES = ("mel", "conv1", "conv2", "blocks.0", "ln_post", "decoder.blocks.0")
FUSED_REPRO = FIXTURES / "repro" / "fused_masked_attention"
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(load_checkpoint):
    return load_checkpoint(MODEL)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return trace_reference(checkpoint)


@pytest.fixture(scope="module")
def reported(checkpoint, engine) -> dict[str, dict]:
    """What ``python -m harness faults`` reports for each detected porting fault."""
    return {r["name"]: r for r in run_faults(checkpoint, engine, PORTING)}


def harness_result(reported, checkpoint, engine, reference, fault) -> dict:
    """``faults``' finding for a porting fault; for a MAX bug (not in ``faults``, whose earlier
    stages would compile anew under its variant), the localiser's own check of its stage."""
    if fault.name in reported:
        return reported[fault.name]
    check = find_check(checkpoint, engine, fault.variant, reference, fault.expected_stage)
    metrics = compare(check.run(), check.expected)
    return {"localized_stage": fault.expected_stage, "metrics": metrics, "reason": ""}


def requirements(names: list[str]) -> set[metadata.Distribution]:
    """The installed distributions ``names`` need, theirs included (markers: if installed)."""
    found, todo = {}, list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0]
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another Python or platform
        if dist.metadata["Name"] not in found:
            found[dist.metadata["Name"]] = dist
            todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return set(found.values())


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A fresh venv holding only max and numpy (and what they require), linked offline from this
    one's site-packages: no torch, no openai-whisper, no harness."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    for dist in requirements(["max", "numpy"]):
        tops = {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return venv / "bin" / "python"


def standalone(out: Path, python: Path) -> folder.Outcome:
    """Run ``out/repro.py`` as a user would, in the venv ``python`` (``-I``: nothing else)."""
    done = subprocess.run(
        [python, "-I", "repro.py"],
        cwd=out,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return folder.Outcome(done.returncode, done.stdout + done.stderr)


def printed_metrics(output: str) -> dict[str, float]:
    line = next(line for line in output.splitlines() if line.startswith("metrics "))
    return json.loads(line.removeprefix("metrics "))


def test_the_clean_venv_has_max_and_numpy_only(clean_python, tmp_path):
    (tmp_path / "repro.py").write_text(
        "import importlib.util as u, max.graph, numpy\n"
        "print([m for m in ('torch', 'whisper', 'harness') if u.find_spec(m)])\n"
    )
    outcome = standalone(tmp_path, clean_python)
    assert outcome.returncode == 0 and outcome.output.strip() == "[]", outcome.output


def test_harness_runs_its_repro_without_the_project(tmp_path):
    """What ``harness repro`` runs to fill the README: harness, torch, whisper unimportable."""
    (tmp_path / "repro.py").write_text("import numpy, max.graph\nimport harness\n")
    outcome = folder.run(tmp_path / "repro.py")
    assert outcome.returncode == 1
    assert "harness: a repro may import only max and numpy" in outcome.output


def test_script_metrics_are_the_harness_metrics():
    """repro.py's own metrics (main.py.tmpl) against compare(), edge cases included."""
    namespace = {"np": np, "math": math}
    exec(script.sections("main")["metrics"], namespace)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 7, 5)).astype(np.float32)
    b = a + 1e-3 * rng.standard_normal(a.shape).astype(np.float32)
    b[0, 2] = a[0, 2]  # an identical row
    zeros = np.zeros_like(a)
    for candidate, expected in ((b, a), (a, a), (zeros, zeros), (a, zeros)):
        assert namespace["metrics"](candidate, expected) == compare(candidate, expected)


def test_planted_constants_say_whisper_value():
    values = script.variant_constants(Variant(layer_norm_eps=1e-6)) | {"PREFIX": "encoder."}
    values |= dict.fromkeys(script.COMMON, 0)
    lines = script.constant_lines("ln_post", values, Variant(layer_norm_eps=1e-6))
    assert "LAYER_NORM_EPS = 1e-06  # planted fault; whisper: 1e-05" in lines
    assert "LN_POST = True" in lines


def test_smallest_halves_heads_then_frames_then_steps_down():
    tried = []

    def fails(sizes):
        tried.append(sizes)
        return sizes["head"] >= 2 and sizes["ctx"] >= 2

    assert smallest(fails, {"head": 6, "ctx": 77}) == {"head": 2, "ctx": 2}
    assert tried[:3] == [{"head": 3, "ctx": 77}, {"head": 1, "ctx": 77}, {"head": 2, "ctx": 77}]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "blocks.9"], "unknown stage 'blocks.9'"),
        (["--stage", "conv1", "--fault", "nope"], "unknown fault 'nope'"),
        (["--stage", "conv1", "--model", "synthetic:nope"], "unknown model 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli.main(["repro", "--model", MODEL, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_out_is_refused(tmp_path, capsys):
    out = tmp_path / "missing" / "out"
    assert cli.main(["repro", "--model", MODEL, "--stage", "conv1", "--out", str(out)]) == 2
    assert "not a writable folder" in capsys.readouterr().err


def hand_over_stage(checkpoint, engine, reference, fault, stage, out, shrink=False):
    return hand_over(checkpoint, engine, fault, reference, stage, out, "test", shrink=shrink)


@slow
@pytest.mark.parametrize("fault", DETECTED, ids=lambda f: f.name)
def test_fault_repro_fails_with_the_reported_metrics(
    checkpoint, engine, reference, reported, clean_python, fault, tmp_path
):
    result = harness_result(reported, checkpoint, engine, reference, fault)
    out = tmp_path / fault.name
    hand_over_stage(checkpoint, engine, reference, fault, result["localized_stage"], out)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "expected.npz",
        "input.npz",
        "repro.py",
        "weights.npz",
    ]
    outcome = standalone(out, clean_python)
    assert outcome.returncode == 1, outcome.output
    if result["metrics"] is None:  # MAX refused the harness's graph: the repro's is refused too
        assert result["reason"].split(":")[0] in outcome.output, outcome.output
        return
    measured = printed_metrics(outcome.output)
    for metric, value in result["metrics"].items():
        assert measured[metric] == pytest.approx(value, rel=1e-3, abs=1e-9), metric
    assert "FAIL:" in outcome.output


@slow
@pytest.mark.parametrize("stage", FAITHFUL_STAGES)
def test_faithful_repro_passes(checkpoint, engine, reference, clean_python, stage, tmp_path):
    done = hand_over_stage(checkpoint, engine, reference, CONTROL, stage, tmp_path / "faithful")
    assert done.stage.returncode == 0, done.stage.output
    outcome = standalone(tmp_path / "faithful", clean_python)
    assert outcome.returncode == 0 and "PASS: within tolerance" in outcome.output, outcome.output


@slow
def test_fused_attention_bug_minimises_to_one_head_two_tokens(
    checkpoint, engine, reference, clean_python, tmp_path
):
    (bug,) = MAX_BUGS
    done = hand_over_stage(
        checkpoint, engine, reference, bug, "decoder.blocks.0", tmp_path / "fused", shrink=True
    )
    assert done.minimal is not None and done.minimal.piece.startswith("attention core")
    assert done.minimal.sizes == {"head": 1, "ctx": 2}
    outcome = standalone(tmp_path / "fused" / "minimal", clean_python)
    assert outcome.returncode == 1, outcome.output
    assert (tmp_path / "fused" / "minimal" / "input.npz").stat().st_size < 10_000


@slow
def test_fused_attention_mask_is_still_dropped_by_this_max(clean_python, tmp_path):
    """MAX 26.7 loses an in-graph causal mask fused into softmax((q kᵀ + mask) · scale). When
    this fails, MAX has fixed it: the decoder's masked attention (layers.attention_float32) may
    go back to the fused form; regenerate the fixture with its README's command."""
    shutil.copytree(FUSED_REPRO, tmp_path / "repro")
    outcome = standalone(tmp_path / "repro", clean_python)
    assert outcome.returncode == 1, outcome.output
    measured = printed_metrics(outcome.output)
    assert measured["rel_l2"] > 1e-2  # a dropped mask, not round-off


def test_fused_attention_fixture_is_short():
    lines = (FUSED_REPRO / "repro.py").read_text().splitlines()
    assert len(lines) <= 90


def test_cli_runs_python_dash_m(tmp_path):
    """``python -m harness repro`` is wired into the command line (its help, no compile)."""
    done = subprocess.run(
        [sys.executable, "-m", "harness", "repro", "--help"],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and re.search(r"--stage", done.stdout)


def failing_document() -> dict:
    document = json.loads((FIXTURES / "sample_parity.json").read_text())
    document["encoder"]["stages"][-1]["isolated"]["rel_l2"] = 3e-3
    document["encoder"]["first_divergent_stage"] = "ln_post"
    document["verdict"] = verdict(document)
    return document


def test_a_failing_report_links_the_repro_of_its_first_divergent_stage():
    document = failing_document()
    report_hook.mark(document)
    assert document["repro"] == {"stage": "ln_post", "folder": "repro"}
    assert "[repro/README.md](repro/README.md)" in markdown(document)
    passing = json.loads((FIXTURES / "sample_parity.json").read_text())
    passing["verdict"] = verdict(passing)
    report_hook.mark(passing)
    assert "repro" not in passing and "repro/README.md" not in markdown(passing)


@slow
def test_report_hook_writes_the_stage_from_the_report_inputs(checkpoint, tmp_path):
    document = failing_document() | {"device": "cpu", "dtype": "float32"}
    report_hook.mark(document)
    done = report_hook.write(checkpoint, document, tmp_path)
    assert (tmp_path / "repro" / "repro.py").is_file()
    assert done.stage.returncode == 0, done.stage.output  # synthetic:tiny's ln_post is faithful


def test_constants_are_python_source_even_when_infinite():
    value = {"snr_db": math.inf, "x": ("float32", ["batch", 3]), "one": (1,), "nan": math.nan}
    copy = eval(script.literal(value), {})
    assert copy["snr_db"] == math.inf and math.isnan(copy["nan"])
    assert copy["x"] == ("float32", ["batch", 3]) and copy["one"] == (1,)


@pytest.mark.parametrize(
    "variant, masked",
    [
        (Variant(fused_masked_attention=True), True),
        (Variant(causal_mask=False), True),
        (Variant(attention_scale_power=1.0), False),
        (Variant(softmax_over_queries=True), False),
    ],
)
def test_core_scripts_build_their_graph(tmp_path, variant, masked):
    """Every form of the attention-core script builds its graph (no compile)."""
    shape = ("float32", ["batch", "head", "ctx", 8])
    values = {
        "MASKED": masked,
        "GRAPH_NAME": "core",
        "NPZ": folder.NPZ,
        "INPUTS": dict.fromkeys("qkv", shape),
        "LIMITS": {"rel_l2": (2e-6, "max")},
    }
    path = tmp_path / "repro.py"
    path.write_text(script.render("sub_core", "A core.", values, variant))
    assert script.declared_weights(script.load_script(path)) == []
    assert len(path.read_text().splitlines()) <= 80
