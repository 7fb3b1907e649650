"""Word error rate, after openai-whisper's own English normaliser (case, punctuation, numbers)."""

from __future__ import annotations

from functools import cache

from whisper.normalizers import EnglishTextNormalizer


@cache
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def words(text: str) -> list[str]:
    return _normalizer()(text).split()


def word_error_rate(hypothesis: str, reference: str) -> float:
    """(substitutions + deletions + insertions) / reference words; an empty reference scores
    0.0 against an empty hypothesis and 1.0 against anything else."""
    hyp, ref = words(hypothesis), words(reference)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(hyp, ref) / len(ref)


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over words, one row at a time."""
    row = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        previous_diagonal, row[0] = row[0], i
        for j, other in enumerate(b, start=1):
            substitution = previous_diagonal + (word != other)
            previous_diagonal = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, substitution)
    return row[-1]
