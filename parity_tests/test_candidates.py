"""Candidates other than our port: MAX 26.7's own encoder as is (four build findings, each at
its line), with its adapter's fixes (every stage within float32 tolerance on real tiny.en), a
deliberately broken one (localised), and the machinery's parts without a compile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness import cli
from harness.candidates import document, registry
from harness.candidates.findings import (
    CandidateFailure,
    at_candidate_boundary,
    permutation,
    transpose_fix,
)
from harness.candidates.interface import BoundaryCandidate, StageCandidate
from harness.candidates.ladder import build_findings
from harness.candidates.max_module import ModuleCandidate
from harness.candidates.parity import boundary_parity
from harness.errors import HarnessError
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.report import build as report
from harness.stages import encoder_stages, stage_named

ADAPTERS = Path(__file__).parent / "candidates"
WRONG_HEAD_SPLIT = ADAPTERS / "wrong_head_split.py"
PYTORCH_ENCODER = ADAPTERS / "pytorch_encoder.py"


@pytest.fixture(scope="module")
def tiny_en(load_checkpoint):
    return load_checkpoint("tiny.en")


def test_max_pipelines_encoder_as_is_fails_four_times_each_at_its_line(tiny_en, engine):
    adapter = registry.resolve("max-pipelines-encoder").adapter
    findings = build_findings(adapter, tiny_en.dims, tiny_en.state_dict(), engine)
    assert [(f.stage, f.phase) for f in findings] == [
        ("blocks.0", "construct"),
        ("conv1", "load weights"),
        ("conv2", "build graph"),
        ("conv1", "build graph"),
    ]
    assert [f.where.split(":")[0] for f in findings] == [
        "encoder.py line 34",
        "encoder.py lines 154–163 (`self.conv1 = …`)",
        "encoder.py line 217",
        "encoder.py line 209",
    ]
    assert "n_heads" in findings[0].error
    assert findings[1].fix.startswith("the weight matches after a transpose (2, 1, 0)")
    assert findings[2].fix.startswith("the input made static")
    assert findings[3].fix.startswith("the input transposed")
    assert [f.adapter_fix for f in findings] == [f.name for f in adapter.fixes]


def test_as_is_report_is_whole_and_fails_on_the_findings(tiny_en, tmp_path):
    candidate = registry.resolve("max-pipelines-encoder")
    parity = document.build(tiny_en, candidate)
    report.write(parity, tmp_path)
    assert not parity["verdict"]["pass"] and len(parity["verdict"]["failures"]) == 4
    assert "encoder" not in parity and parity["candidate"]["graphs_compiled"] == 0
    written = (tmp_path / "report.md").read_text()
    for line in ("line 34", "lines 154–163", "line 217", "line 209"):
        assert f"encoder.py {line}" in written
    assert "not provided by the candidate, so not compared: mel, decoder" in written
    assert json.loads((tmp_path / "parity.json").read_text())["candidate"]["findings"]
    assert (tmp_path / "report.html").read_text().count("encoder.py line") == 4  # each finding
    assert cli.main(["gate", str(tmp_path / "parity.json")]) == 1  # judged, not refused


def test_fixed_candidate_is_within_float32_tolerance_on_tiny_en(tiny_en, tmp_path):
    parity = document.build(tiny_en, registry.resolve("max-pipelines-encoder:fixed"))
    report.write(parity, tmp_path)
    assert parity["verdict"] == {"pass": True, "failures": []}
    stages = [s["stage"] for s in parity["encoder"]["stages"]]
    assert stages == [s.name for s in encoder_stages(tiny_en.dims.n_audio_layer)]
    assert max(s["chained"]["rel_l2"] for s in parity["encoder"]["stages"]) < 1e-5
    assert parity["candidate"]["graphs_compiled"] == 1
    assert "Findings: none" in (tmp_path / "report.md").read_text()
    assert cli.main(["gate", str(tmp_path / "parity.json")]) == 0


def test_wrong_head_split_is_localised_to_blocks_0(tiny_en):
    candidate = registry.resolve(str(WRONG_HEAD_SPLIT))
    parity = document.build(tiny_en, candidate)
    assert parity["candidate"]["findings"] == []
    assert parity["encoder"]["first_divergent_stage"] == "blocks.0"
    failures = parity["verdict"]["failures"]
    assert failures and all("conv" not in f for f in failures)
    assert failures[0].startswith("encoder blocks.0 chained rel_l2")


def test_our_port_is_a_stage_candidate_and_a_module_adapter_a_boundary_one(tiny_en, engine):
    ours = MaxAudioEncoder(tiny_en.dims, tiny_en.state_dict(), engine)
    adapter = registry.resolve("max-pipelines-encoder:fixed").adapter
    module = ModuleCandidate(adapter, tiny_en.dims, tiny_en.state_dict(), engine)
    assert isinstance(ours, StageCandidate) and not isinstance(ours, BoundaryCandidate)
    assert isinstance(module, BoundaryCandidate) and not isinstance(module, StageCandidate)
    assert registry.resolve("max-whisper").ours


@pytest.mark.parametrize("spec", ["max-whisper:fixed", "no-such-port", "missing.py"])
def test_an_unknown_candidate_is_a_one_line_error(spec):
    with pytest.raises(HarnessError, match="--candidate"):
        registry.resolve(spec)


def test_a_boundary_in_another_layout_is_a_finding_with_its_transpose(float32_tolerances):
    stages = encoder_stages(1)
    rng = np.random.default_rng(0)
    reference = {s.name: rng.standard_normal((1, 6, 4)).astype(np.float32) for s in stages}
    outputs = dict(reference, conv2=reference["conv2"].transpose(0, 2, 1))
    section, findings = boundary_parity(stages, outputs, reference, float32_tolerances, 1.0)
    assert [(f.stage, f.fix) for f in findings] == [("conv2", "its transpose (0, 2, 1) matches")]
    assert [s["stage"] for s in section["stages"]] == ["conv1", "blocks.0", "ln_post"]
    assert section["first_divergent_stage"] is None


def test_candidate_errors_become_findings_and_harness_errors_do_not(tiny_en):
    with pytest.raises(CandidateFailure) as caught, at_candidate_boundary("run", "conv1"):
        raise RuntimeError("first line\nthe reason")
    assert caught.value.finding.error == "RuntimeError: the reason"
    with pytest.raises(ValueError, match="no stage"), at_candidate_boundary("run"):
        stage_named(tiny_en.dims, "blocks.99")  # the harness's own error keeps its type


def test_transpose_fix_reads_max_weight_shape_errors():
    error = "weight 'conv1.weight' had different shape (expected=(3, 80, 384), actual=(384, 80, 3))"
    assert transpose_fix(error) == (
        "the weight matches after a transpose (2, 1, 0): (384, 80, 3) → (3, 80, 384)"
    )
    assert permutation((2, 3), (3, 4)) is None and permutation((2, 3), (2, 3)) is None


def test_a_candidate_need_not_be_max(tiny_en):
    """openai-whisper's own modules as a StageCandidate from a file: isolated and chained."""
    parity = document.build(tiny_en, registry.resolve(str(PYTORCH_ENCODER)))
    assert parity["verdict"]["pass"] and parity["candidate"]["graphs_compiled"] == 0
    assert parity["candidate"]["form"].startswith("stage inputs exposed")
    stages = parity["encoder"]["stages"]
    assert len(stages) == 3 + tiny_en.dims.n_audio_layer
    assert max(s[kind]["rel_l2"] for s in stages for kind in ("isolated", "chained")) < 1e-6
