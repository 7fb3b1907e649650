"""How far a candidate activation is from the reference: one set of metrics for every stage."""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np


class Metrics(TypedDict):
    cosine: float
    min_frame_cosine: float
    rel_l2: float
    max_abs: float
    snr_db: float


def compare(candidate: np.ndarray, reference: np.ndarray) -> Metrics:
    """Metrics of ``candidate`` against ``reference``, both (..., frames, channels).

    ``min_frame_cosine`` is the worst cosine over frames (rows of the last axis): a global cosine
    of 0.9999 can hide a few broken frames. Computed in float64 so the metric adds no error.
    """
    if candidate.shape != reference.shape:
        shapes = f"candidate {candidate.shape}, reference {reference.shape}"
        raise ValueError(f"shape mismatch: {shapes}")
    a = candidate.astype(np.float64)
    b = reference.astype(np.float64)
    error = np.linalg.norm(a - b)
    norm = np.linalg.norm(b)
    return Metrics(
        cosine=_cosine(a.ravel(), b.ravel()),
        min_frame_cosine=float(np.min(frame_cosines(a, b))),
        rel_l2=float(error / norm) if norm else (0.0 if error == 0 else math.inf),
        max_abs=float(np.max(np.abs(a - b))) if a.size else 0.0,
        snr_db=_snr_db(norm, error),
    )


def frame_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row of the last axis, flattened over leading axes (batch, frames)."""
    a2 = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b2 = b.reshape(-1, b.shape[-1]).astype(np.float64)
    dot = np.sum(a2 * b2, axis=1)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    same = np.all(a2 == b2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / norms, 0.0)
    return np.where(same, 1.0, cos)  # two identical (even all-zero) frames agree perfectly


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(frame_cosines(a[None, :], b[None, :])[0])


def _snr_db(signal_norm: float, error_norm: float) -> float:
    """10·log10(‖ref‖² / ‖cand − ref‖²); +inf when they are identical."""
    if error_norm == 0:
        return math.inf
    if signal_norm == 0:
        return -math.inf
    return float(20 * math.log10(signal_norm / error_norm))
