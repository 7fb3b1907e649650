"""Pass or fail for a ``parity.json`` document: every comparison within its dtype's tolerances.

The verdict is recomputed from the metrics rather than trusted from the document, so the report a
person reads and the gate CI runs can never disagree. Each failure is one line,
``"<what> <kind> <metric> <value> > <limit>"``, naming the stage so nobody has to dig for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

from harness.compare import tolerances
from harness.compare.tolerances import Tolerances

# Without limits of their own in the tolerance file, token choices must agree exactly: one
# different argmax under teacher forcing is already a different transcript.
DEFAULT_TEACHER_FORCED = {"top1_agreement": 1.0}


class Comparison(NamedTuple):
    """One tensor compared with its reference: a row of the stage tables and of summary.csv."""

    section: str  # "mel", "encoder" or "decoder"
    stage: str  # "mel", "conv1", "blocks.0", …, "fused"
    kind: str  # the tolerance kind: "mel", "isolated", "chained" or "fused"
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        """``"encoder blocks.2 isolated"``, ``"encoder fused"``, ``"mel"``: no word repeated."""
        return " ".join(dict.fromkeys((self.section, self.stage, self.kind)))


def verdict(document: dict[str, Any]) -> dict[str, Any]:
    """``{"pass": bool, "failures": [str]}`` for the whole document (absent sections pass)."""
    limits = limits_of(document)
    failures = [
        f"{c.label} {v}" for c in comparisons(document) for v in check(c.metrics, c.kind, limits)
    ]
    teacher_forced = document.get("decoder", {}).get("teacher_forced")
    if teacher_forced:
        failures += [
            f"decoder teacher_forced {v}" for v in check(teacher_forced, "teacher_forced", limits)
        ]
    failures += [f for t in document.get("transcripts", []) for f in transcript_failures(t)]
    failures += [finding_failure(f) for f in document.get("candidate", {}).get("findings", [])]
    peers = document.get("peers", {})
    failures += [
        f"{name} {v}"
        for name in peers.get("labels", {})
        if name.startswith("max-")
        for v in mode_failures(peers[name], name, limits)
    ]
    failures += [
        f"language {e['audio']} {v}"
        for e in document.get("language", [])
        for v in language_failures(e, limits)
    ]
    return {"pass": not failures, "failures": failures}


def limits_of(document: dict[str, Any]) -> Tolerances:
    """The limits the document was measured against (the tolerance file's if it has none).

    The mel falls back to the ``isolated`` limits (it is one stage fed the reference audio), and
    teacher forcing to exact top-1 agreement, so no section goes ungated for want of an entry.
    """
    dtype = document["dtype"]
    table = document.get("tolerances") or tolerances.load(dtype).limits
    table = {"teacher_forced": DEFAULT_TEACHER_FORCED, **table}
    table.setdefault("mel", table.get("isolated", {}))
    return Tolerances(dtype, table)


def check(metrics: dict[str, Any], kind: str, limits: Tolerances) -> list[str]:
    """``Tolerances.violations`` of a document's metrics, its nulls read back as numbers.

    JSON has no NaN: the report writes a NaN metric (a broken graph) as null, which must fail as
    NaN. A null ``snr_db`` is the one legitimate null: identical tensors, infinite SNR.
    """
    numbers = {m: _null_as_worst(m) if v is None else v for m, v in metrics.items()}
    return limits.violations(numbers, kind)


def _null_as_worst(metric: str) -> float:
    return math.inf if metric == "snr_db" else math.nan


def comparisons(document: dict[str, Any]) -> Iterator[Comparison]:
    """Every tensor comparison of the document, in pipeline order: mel, encoder, decoder."""
    if "mel" in document:
        yield Comparison("mel", "mel", "mel", document["mel"])
    encoder = document.get("encoder", {})
    yield from _stage_comparisons("encoder", encoder.get("stages", []))
    if "fused" in encoder:
        yield Comparison("encoder", "fused", "fused", encoder["fused"])
    decoder_stages = document.get("decoder", {}).get("teacher_forced", {}).get("stages", [])
    yield from _stage_comparisons("decoder", decoder_stages)


def _stage_comparisons(section: str, stages: list[dict[str, Any]]) -> Iterator[Comparison]:
    for result in stages:
        for kind in ("isolated", "chained"):
            if kind in result:
                yield Comparison(section, result["stage"], kind, result[kind])


def stage_failures(result: dict[str, Any], limits: Tolerances) -> list[str]:
    """``"<kind> <metric> <value> > <limit>"`` for one stage row, isolated then chained."""
    return [
        f"{kind} {v}"
        for kind in ("isolated", "chained")
        if kind in result
        for v in check(result[kind], kind, limits)
    ]


def finding_failure(finding: dict[str, Any]) -> str:
    """A stage the candidate could not build, run or lay out as openai-whisper does."""
    return f"candidate {finding['stage'] or '-'} {finding['phase']}: {finding['error']}"


def language_failures(entry: dict[str, Any], limits: Tolerances) -> list[str]:
    """A different detected language, or language probabilities further apart than allowed."""
    failures = check(entry, "language", limits)
    if not entry["same_language"]:
        torch_language, max_language = entry["torch"]["language"], entry["max"]["language"]
        failures.insert(0, f"same_language false: PyTorch {torch_language}, MAX {max_language}")
    return failures


def mode_failures(entry: dict[str, Any], name: str, limits: Tolerances) -> list[str]:
    """A MAX weights mode (``max-q4_0``) against its own limits, ``weights:<mode>`` in the
    tolerance file: teacher-forced top-1 and KL, and the share of transcripts token-equal to
    PyTorch's. Without an entry it must be as exact as float32 (no mode goes ungated)."""
    kind = f"weights:{entry['weights']}"
    if kind not in limits.limits:
        exact = {**limits.limits["teacher_forced"], "tokens_equal_fraction": 1.0}
        limits = Tolerances(limits.dtype, {**limits.limits, kind: exact})
    metrics = {**entry["teacher_forced"], "tokens_equal_fraction": entry["tokens_equal_fraction"]}
    return check(metrics, kind, limits)


def transcript_failures(transcript: dict[str, Any]) -> list[str]:
    """Nothing when MAX decoded the same tokens as PyTorch, else one line on where they split."""
    if transcript["tokens_equal"]:
        return []
    return [
        f"transcript {transcript['audio']} tokens_equal false: first divergent token "
        f"{transcript.get('first_divergent_token')}, WER vs torch "
        f"{transcript.get('wer_max_vs_torch')}"
    ]
