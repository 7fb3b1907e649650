"""Planted faults on synthetic:tiny: each is found at its stage and sub-stage, the faithful port
nowhere; the float64 arbiter blames the right side (its wiring into the report and the noise
floor are tested without MAX in test_arbiter.py).

One ``run_faults`` over the whole catalogue serves every slow test. It compiles only the graphs a
fault changes up to the stage where it shows, plus its sub-stage graphs (about 20 cold compiles
on synthetic:tiny; the faithful ones are shared with the other test modules by name). The fast
tests fake the stages and transcripts: which errors count as findings and which are bugs of the
harness, and that a failed transcript is never read as unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, ops

from harness.compare import tolerances
from harness.compare.bisect import RESIDUAL
from harness.faults import cli, findings, localise, transcripts
from harness.faults.catalogue import CATALOGUE, CONTROL, Fault
from harness.faults.findings import run_faults
from harness.faults.localise import Check
from harness.faults.reference_trace import trace_reference
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.variant import FAITHFUL
from harness.reference.arbiter import arbitrate

MODEL = "synthetic:tiny"
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(load_checkpoint):
    return load_checkpoint(MODEL)


@pytest.fixture(scope="module")
def results(checkpoint, engine) -> dict[str, dict]:
    return {r["name"]: r for r in run_faults(checkpoint, engine, (CONTROL, *CATALOGUE))}


@slow
def test_the_faithful_port_diverges_nowhere(results, float32_tolerances):
    control = results[CONTROL.name]
    assert not control["detected"], control["reason"]
    assert control["localized_stage"] is None and control["sub_stage"] is None
    assert not float32_tolerances.violations(control["metrics"], "isolated")


@slow
@pytest.mark.parametrize("fault", [f for f in CATALOGUE if f.expected_stage], ids=lambda f: f.name)
def test_fault_is_detected_at_its_stage_and_sub_stage(results, fault: Fault):
    result = results[fault.name]
    assert result["detected"], result["reason"]
    found = (result["localized_stage"], result["sub_stage"])
    assert found == (fault.expected_stage, fault.expected_sub_stage), result["reason"]
    assert result["localized_correctly"]


@slow
@pytest.mark.parametrize(
    "fault", [f for f in CATALOGUE if not f.expected_stage], ids=lambda f: f.name
)
def test_a_benign_fault_raises_no_alarm(results, fault: Fault, float32_tolerances):
    """A change the maths cancels (key bias under softmax) must pass, not be flagged."""
    result = results[fault.name]
    assert not result["detected"], result["reason"]
    assert not float32_tolerances.violations(result["metrics"], "isolated")


@slow
def test_a_stage_that_cannot_be_built_is_where_the_fault_is(results):
    result = results["conv2_padding_0"]
    assert result["metrics"] is None and "1499" in result["reason"]


@slow
def test_a_block_whose_sub_modules_all_agree_blames_the_residual(results, float32_tolerances):
    result = results["mlp_no_residual"]
    assert result["sub_stage"] == RESIDUAL
    assert list(result["sub_stage_metrics"]) == ["attn_ln", "attn", "mlp_ln", "mlp"]
    for metrics in result["sub_stage_metrics"].values():
        assert not float32_tolerances.violations(metrics, "isolated")


@slow
def test_arbiter_says_the_reference_is_closer_for_every_numeric_fault(results):
    verdicts = [r["arbiter"] for r in results.values() if r["detected"] and r["metrics"]]
    assert len(verdicts) >= 10
    for verdict in verdicts:
        assert verdict["closer"] == "reference", verdict
        assert verdict["torch_vs_f64_rel_l2"] < 1e-6 < verdict["max_vs_f64_rel_l2"], verdict


@slow
def test_arbiter_on_a_faithful_stage_finds_both_sides_at_round_off(
    checkpoint, engine, float32_tolerances
):
    ref = trace_reference(checkpoint)
    candidate = MaxAudioEncoder(checkpoint.dims, checkpoint.model.state_dict(), engine, FAITHFUL)
    block = candidate.stages()[2]
    output = candidate.run_stage(block, ref.encoder["conv2"])
    limit = float32_tolerances.limit("isolated", "rel_l2")
    expected, inputs = ref.encoder[block.name], [ref.encoder["conv2"]]
    verdict = arbitrate(checkpoint.model, block.name, inputs, output, expected, limit)
    assert verdict["stage"] == "blocks.0" and verdict["closer"] == "tie"
    for side in ("max_vs_f64_rel_l2", "torch_vs_f64_rel_l2"):
        assert math.isfinite(verdict[side]) and 0 < verdict[side] < limit, verdict


@slow
def test_command_line_writes_the_results_and_a_table(tmp_path, capsys, results):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    out = tmp_path / "faults.json"
    args = parser.parse_args(
        ["faults", "--model", MODEL, "--only", CONTROL.name, "--json", str(out)]
    )
    assert args.run(args) == 0
    document = json.loads(out.read_text())
    assert [r["name"] for r in document["faults"]] == [CONTROL.name]
    assert document["faults"][0]["transcript_changed"] is None
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["fault", "expected", "localized", "sub_stage"]
    assert cli.table(list(results.values())).count("\n") == len(results)


# -- fast: fake stages and transcripts, nothing compiles -----------------------------------------


def unbuildable() -> np.ndarray:
    """What conv2_padding_0 does: 1499 frames meet 1500 positional embeddings; MAX refuses."""
    types = [TensorType(DType.float32, [n, 4], DeviceRef.CPU()) for n in (1499, 1500)]
    with Graph("unbuildable", input_types=types) as graph:
        graph.output(ops.add(graph.inputs[0].tensor, graph.inputs[1].tensor))
    raise AssertionError("MAX built the graph")


def localise_one(monkeypatch, run) -> dict:
    """``localise`` over a single fake stage whose MAX side is ``run``."""
    expected = np.ones((1, 4, 8), np.float32)
    check = Check("conv2", "isolated", (expected,), expected, run)
    monkeypatch.setattr(localise, "checks", lambda *args: iter([check]))
    return localise.localise(None, None, FAITHFUL, None, tolerances.load("float32"))


def test_a_graph_max_refuses_is_a_finding_at_its_stage(monkeypatch):
    found = localise_one(monkeypatch, unbuildable)
    assert found["localized_stage"] == "conv2" and found["metrics"] is None
    assert found["reason"].startswith("ValueError: Failed to create op")
    assert "1499" in found["reason"]


def test_a_wrong_output_shape_is_a_finding_at_its_stage(monkeypatch):
    found = localise_one(monkeypatch, lambda: np.ones((1, 3, 8), np.float32))
    assert found["localized_stage"] == "conv2" and "(1, 3, 8)" in found["reason"]


@pytest.mark.parametrize("error", [KeyError("blocks.0"), ValueError("our own bug")])
def test_a_harness_bug_in_a_stage_propagates(monkeypatch, error):
    """A ValueError is what MAX raises too: where it comes from decides, not its type."""

    def run() -> np.ndarray:
        raise error

    with pytest.raises(type(error)):
        localise_one(monkeypatch, run)


def fake_transcripts(monkeypatch, transcribe) -> None:
    """Clean stages, and ``transcribe(variant)`` in place of decoding through the stage graphs."""
    monkeypatch.setattr(findings, "trace_reference", lambda checkpoint: None)
    monkeypatch.setattr(findings, "compile_ahead", lambda *args: None)  # no graph runs
    monkeypatch.setattr(findings, "localise", lambda *args: localise._found(None, "clean"))
    monkeypatch.setattr(transcripts, "StageWhisper", lambda checkpoint, engine, variant: variant)
    monkeypatch.setattr(transcripts, "load_audio", lambda path: None)
    monkeypatch.setattr(transcripts, "transcribe", lambda variant, audio: transcribe(variant))


@pytest.mark.parametrize("failing", ["both", "faithful", "faulty"])
def test_a_failed_transcript_is_unknown_never_unchanged(monkeypatch, failing):
    fault = CATALOGUE[0]
    failed = {"both": {FAITHFUL, fault.variant}, "faithful": {FAITHFUL}, "faulty": {fault.variant}}

    def transcribe(variant) -> SimpleNamespace:
        return unbuildable() if variant in failed[failing] else SimpleNamespace(text=" Hello.")

    fake_transcripts(monkeypatch, transcribe)
    engine = SimpleNamespace(dtype=DType.float32)
    [result] = run_faults(None, engine, (fault,), transcripts=True)
    assert result["transcript_changed"] is None
    assert "1499" in result["transcript_error"]
    assert result["transcript_error"].startswith("faithful") == (failing == "faithful")
    assert cli.table([result]).splitlines()[1].split()[5] == "error"


def test_a_harness_bug_while_transcribing_propagates(monkeypatch):
    def transcribe(variant):
        raise KeyError("segments")

    fake_transcripts(monkeypatch, transcribe)
    with pytest.raises(KeyError):
        run_faults(None, SimpleNamespace(dtype=DType.float32), (CATALOGUE[0],), transcripts=True)
