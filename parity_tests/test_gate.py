"""The verdict and the gate CI trusts: pass on a clean report, one named line per problem else.

Built on fixtures/sample_parity.json (a real synthetic:tiny report, trimmed); nothing compiles.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.compare.gate import ROUNDING_FLOOR, regressions, rel_l2s
from harness.compare.verdict import verdict
from harness.paths import REPO

SAMPLE = REPO / "fixtures" / "sample_parity.json"


@pytest.fixture
def sample() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text())


def gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.compare.gate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def saved(tmp_path: Path, document: dict[str, Any], name: str = "parity.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def stage(document: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    stages = document[section]["stages"] if section == "encoder" else None
    stages = stages or document["decoder"]["teacher_forced"]["stages"]
    return next(s for s in stages if s["stage"] == name)


def test_the_sample_is_clean_and_complete(sample):
    assert verdict(sample) == {"pass": True, "failures": []}
    assert {"mel", "decoder", "transcripts", "speed"} <= set(sample)
    assert sample["model"]["weights"] == "synthetic"


def test_gate_passes_a_clean_report(tmp_path, sample):
    result = gate(saved(tmp_path, sample))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_a_stage_over_tolerance_fails_naming_it(tmp_path, sample):
    stage(sample, "encoder", "blocks.2")["isolated"]["rel_l2"] = 5e-3
    result = gate(saved(tmp_path, sample))
    assert result.returncode == 1
    assert "encoder blocks.2 isolated rel_l2 0.005 > 2e-06" in result.stdout.splitlines()


def test_each_problem_is_one_line(sample):
    stage(sample, "encoder", "conv1")["chained"]["min_frame_cosine"] = 0.99
    stage(sample, "decoder", "decoder.blocks.1")["isolated"]["rel_l2"] = 1e-3
    sample["mel"]["rel_l2"] = 1.0
    sample["encoder"]["fused"]["rel_l2"] = 1e-4
    assert verdict(sample)["failures"] == [
        "mel rel_l2 1 > 1e-05",
        "encoder conv1 chained min_frame_cosine 0.99 < 0.99999",
        "encoder fused rel_l2 0.0001 > 1e-05",
        "decoder decoder.blocks.1 isolated rel_l2 0.001 > 2e-06",
    ]


def test_a_transcript_mismatch_fails(tmp_path, sample):
    transcript = sample["transcripts"][0]
    transcript["max"]["tokens"][3] += 1
    transcript.update(tokens_equal=False, first_divergent_token=3, wer_max_vs_torch=0.25)
    result = gate(saved(tmp_path, sample))
    assert result.returncode == 1
    assert f"transcript {transcript['audio']} tokens_equal false" in result.stdout


def test_teacher_forced_must_agree_on_every_token(sample):
    sample["decoder"]["teacher_forced"]["top1_agreement"] = 0.98
    assert verdict(sample)["failures"] == ["decoder teacher_forced top1_agreement 0.98 < 1"]


def test_teacher_forced_limits_from_the_tolerances_replace_the_default(sample):
    sample["decoder"]["teacher_forced"]["top1_agreement"] = 0.98
    sample["tolerances"]["teacher_forced"] = {"top1_agreement": 0.95, "max_kl": 1e-9}
    sample["decoder"]["teacher_forced"]["max_kl"] = 1e-6
    assert verdict(sample)["failures"] == ["decoder teacher_forced max_kl 1e-06 > 1e-09"]


def test_a_null_metric_fails_but_a_null_snr_means_identical(sample):
    # parity.json writes NaN as null: a broken graph must not pass for want of a number.
    stage(sample, "encoder", "blocks.0")["chained"]["rel_l2"] = None
    stage(sample, "encoder", "blocks.1")["chained"]["snr_db"] = None
    assert verdict(sample)["failures"] == ["encoder blocks.0 chained rel_l2 nan > 1e-05"]


def test_mel_falls_back_to_the_isolated_limits(sample):
    sample["mel"]["rel_l2"] = 5e-6
    assert verdict(sample)["pass"]  # within the mel limit, 1e-05
    del sample["tolerances"]["mel"]
    assert verdict(sample)["failures"] == ["mel rel_l2 5e-06 > 2e-06"]


def test_optional_sections_may_be_absent(sample):
    for section in ("mel", "decoder", "transcripts", "speed", "tolerances"):
        del sample[section]
    del sample["encoder"]["frame_errors"]
    assert verdict(sample) == {"pass": True, "failures": []}


def test_a_regression_past_the_factor_fails_even_within_tolerance(tmp_path, sample):
    baseline = saved(tmp_path, sample, "baseline.json")
    chained = stage(sample, "encoder", "blocks.3")["chained"]
    chained["rel_l2"] *= 12  # ~7e-6: inside the 1e-5 tolerance, but 12x the baseline
    report = saved(tmp_path, sample)
    assert gate(report).returncode == 0
    result = gate(report, "--baseline", baseline)
    assert result.returncode == 1
    assert result.stdout.startswith("encoder blocks.3 chained rel_l2 ")
    assert "10 x baseline" in result.stdout
    assert gate(report, "--baseline", baseline, "--factor", "20").returncode == 0


def test_regressions_compare_only_what_both_reports_have(sample):
    baseline = rel_l2s(sample)
    grown = copy.deepcopy(sample)
    grown["mel"]["rel_l2"] *= 100
    del baseline["mel"]
    del grown["decoder"]
    assert regressions(grown, baseline, 10) == []


def test_a_bit_identical_baseline_allows_round_off(sample):
    embed = stage(sample, "decoder", "decoder.embed")
    assert embed["isolated"]["rel_l2"] == 0.0  # an embedding lookup: exact
    baseline = rel_l2s(sample)
    embed["isolated"]["rel_l2"] = ROUNDING_FLOOR
    assert regressions(sample, baseline, 10) == []
    embed["isolated"]["rel_l2"] = 1e-5
    assert regressions(sample, baseline, 10)[0].startswith("decoder decoder.embed isolated rel_l2")


def test_a_baseline_of_another_dtype_is_refused(tmp_path, sample):
    report = saved(tmp_path, sample)
    sample["dtype"] = "bfloat16"
    result = gate(report, "--baseline", saved(tmp_path, sample, "baseline.json"))
    assert result.returncode == 2
    assert "baseline.json: baseline is synthetic:tiny cpu bfloat16" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("{not json", "not JSON"),
        ('{"schema": 2, "dtype": "float32"}', "not a schema-1 parity document (schema 2)"),
        ("[1, 2]", "not a schema-1 parity document (schema 'list')"),
        ('{"schema": 1, "dtype": "float32"}', "without encoder stages"),
        (
            '{"schema": 1, "dtype": "float32", "device": "cpu", '
            '"model": {"name": "synthetic:tiny"}, '
            '"encoder": {"stages": [{"stage": "conv1", "isolated": 5}]}}',
            "malformed parity document",
        ),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "parity.json"
    if content is not None:
        path.write_text(content)
    for args in ([str(path)], [str(SAMPLE), "--baseline", str(path)]):
        result = gate(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"error: {path}: ")
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
