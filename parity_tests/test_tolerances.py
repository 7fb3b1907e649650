"""The tolerance check itself: a gated metric that is missing or NaN fails; nothing compiles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.compare import tolerances
from harness.compare.language import language_metrics
from harness.compare.metrics import compare
from harness.compare.verdict import check, limits_of, verdict
from harness.paths import FIXTURES

SAMPLE = FIXTURES / "sample_parity.json"
CLEAN = {"rel_l2": 0.0, "cosine": 1.0, "min_frame_cosine": 1.0}


@pytest.fixture
def limits() -> tolerances.Tolerances:
    return tolerances.load("float32")


def test_metrics_within_every_limit_pass(limits):
    assert limits.violations(CLEAN, "isolated") == []


@pytest.mark.parametrize(
    "metrics", [{"cosine": 1.0, "min_frame_cosine": 1.0}, {**CLEAN, "rel_l2": None}]
)
def test_a_missing_gated_metric_fails(limits, metrics):
    assert limits.violations(metrics, "isolated") == ["rel_l2 missing"]


def test_a_nan_metric_fails(limits):
    assert limits.violations({**CLEAN, "cosine": math.nan}, "isolated") == ["cosine nan < 0.999999"]


def test_a_document_null_is_nan_but_a_null_snr_is_identical(limits):
    """JSON writes NaN and inf as null: a null rel_l2 fails, a null snr_db is infinite SNR."""
    metrics = {**CLEAN, "rel_l2": None, "snr_db": None}
    assert check(metrics, "isolated", limits) == ["rel_l2 nan > 2e-06"]
    snr_gated = tolerances.Tolerances("float32", {"isolated": {"snr_db": 100.0}})
    assert check({"snr_db": None}, "isolated", snr_gated) == []
    assert check({}, "isolated", snr_gated) == ["snr_db missing"]


@pytest.mark.parametrize(
    ("dtype", "device"), [("float32", "cpu"), ("bfloat16", "cpu"), ("float32", "gpu")]
)
def test_every_gated_metric_is_one_its_callers_compute(dtype, device):
    """The check fails a metric nobody computed, so each kind's gate must ask for real ones."""
    limits = tolerances.load(dtype, device)
    x = np.ones((1, 3, 4), np.float32)
    computed = {
        "isolated": compare(x, x),
        "chained": compare(x, x),
        "fused": compare(x, x),
        "mel": compare(x, x),
        "language": language_metrics({"en": 0.9, "de": 0.1}, {"en": 0.9, "de": 0.1}),
        "teacher_forced": json.loads(SAMPLE.read_text())["decoder"]["teacher_forced"],
    }
    # a MAX weights mode: its teacher-forced summary and share of equal transcripts (peer_parity)
    mode = {**computed["teacher_forced"], "tokens_equal_fraction": 1.0}
    computed |= {kind: mode for kind in limits.limits if kind.startswith("weights:")}
    assert set(limits.limits) <= set(computed)
    for kind, metrics in computed.items():
        assert not limits.violations(metrics, kind), kind
        assert not check(metrics, kind, limits_of({"dtype": dtype})), kind


def test_float32_on_a_gpu_is_judged_by_tf32s_limits_where_they_were_measured():
    cpu, gpu = tolerances.load("float32"), tolerances.load("float32", "gpu")
    assert gpu.limit("fused", "rel_l2") > 100 * cpu.limit("fused", "rel_l2")  # TF32
    assert gpu.limit("mel", "rel_l2") == cpu.limit("mel", "rel_l2")  # not measured on a GPU
    assert tolerances.load("bfloat16", "gpu") == tolerances.load("bfloat16")


def _mode(weights: str, kl: float, equal: float) -> dict:
    return {
        "weights": weights,
        "teacher_forced": {"steps": 78, "top1_agreement": 1.0, "max_kl": kl, "max_abs_logit": 0.1},
        "tokens_equal_fraction": equal,
    }


def test_a_max_weights_mode_is_judged_by_its_own_limits():
    limit = tolerances.load("float32").limit("weights:float16", "max_kl")
    peers = {"labels": {"max-float16": "MAX float16 decoding"}}
    document = {"dtype": "float32", "peers": peers}
    peers["max-float16"] = _mode("float16", limit / 2, 1.0)
    assert verdict(document)["pass"]
    peers["max-float16"] = _mode("float16", limit * 2, 0.5)
    assert verdict(document)["failures"] == [
        f"max-float16 max_kl {limit * 2:.3g} > {limit:.3g}",
        "max-float16 tokens_equal_fraction 0.5 < 0.9",
    ]


def test_a_weights_mode_without_limits_must_be_as_exact_as_float32():
    """No mode goes ungated for want of an entry: q4_0 has none, so it meets float32's."""
    document = {"dtype": "float32", "peers": {"labels": {"max-q4_0": "MAX q4_0 decoding"}}}
    document["peers"]["max-q4_0"] = _mode("q4_0", 0.03, 0.75)
    failures = verdict(document)["failures"]
    assert failures[0].startswith("max-q4_0 max_kl 0.03 > ")
    assert failures[1] == "max-q4_0 tokens_equal_fraction 0.75 < 1"
