"""Word error rate on cases worked out by hand."""

import pytest

from harness.compare.wer import edit_distance, word_error_rate


@pytest.mark.parametrize(
    ("hypothesis", "reference", "expected"),
    [
        ("the cat sat", "the cat sat", 0.0),
        ("The cat, sat!", "the cat sat", 0.0),  # case and punctuation are normalised away
        ("the dog sat", "the cat sat", 1 / 3),  # one substitution
        ("the sat", "the cat sat", 1 / 3),  # one deletion
        ("the big cat sat", "the cat sat", 1 / 3),  # one insertion
        ("", "the cat sat", 1.0),
        ("", "", 0.0),
        ("words", "", 1.0),
    ],
)
def test_word_error_rate(hypothesis, reference, expected):
    assert word_error_rate(hypothesis, reference) == pytest.approx(expected)


def test_edit_distance_is_symmetric_and_counts_all_edits():
    a, b = "a b c d".split(), "b c e d f".split()
    assert edit_distance(a, b) == edit_distance(b, a) == 3
