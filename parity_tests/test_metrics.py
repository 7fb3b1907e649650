"""The metrics on inputs whose answers are known by hand."""

import math

import numpy as np
import pytest

from harness.compare.metrics import compare, frame_cosines


def test_identical_tensors_are_perfect():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4) + 1
    m = compare(x, x)
    assert m == {
        "cosine": 1.0,
        "min_frame_cosine": 1.0,
        "rel_l2": 0.0,
        "max_abs": 0.0,
        "snr_db": math.inf,
    }


def test_uniform_relative_error():
    reference = np.ones((2, 5, 8), dtype=np.float32)
    m = compare(reference * 1.01, reference)
    assert m["rel_l2"] == pytest.approx(0.01, rel=1e-6)
    assert m["snr_db"] == pytest.approx(40.0, rel=1e-6)
    assert m["max_abs"] == pytest.approx(0.01, rel=1e-5)
    assert m["cosine"] == pytest.approx(1.0, abs=1e-12)  # a pure scale keeps the direction


def test_one_broken_frame_shows_in_min_frame_cosine_only():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1, 100, 16))
    candidate = reference.copy()
    candidate[0, 37] = -candidate[0, 37]  # one frame flipped
    m = compare(candidate, reference)
    assert m["min_frame_cosine"] == pytest.approx(-1.0)
    assert m["cosine"] > 0.95


def test_orthogonal_frames_have_zero_cosine():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert frame_cosines(a, b).tolist() == [0.0, 0.0]


def test_zero_frames_agree_only_with_zero():
    zeros = np.zeros((1, 2, 3))
    ones = np.ones((1, 2, 3))
    assert compare(zeros, zeros)["min_frame_cosine"] == 1.0
    assert compare(ones, zeros)["rel_l2"] == math.inf


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        compare(np.zeros((1, 2)), np.zeros((2, 1)))
