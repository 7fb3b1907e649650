"""Pretrained Whisper on real human speech: MAX's transcripts and language identification equal
PyTorch's, and the words are right.

tiny.en and base load from openai-whisper's cache when OpenAI's files are there, else from the
pinned PyPI weight packages (``make install``); the clips are LibriVox readings, spoken card
names and a spoken command (``fixtures/speech``, from Debian's pocketsphinx-testdata).
"""

import pytest

from harness.compare.language import compare_languages
from harness.compare.transcripts import (
    compare_transcripts,
    corpus_wer,
    load_clips,
    speech_clips,
    transcription_language,
)
from harness.max_whisper.whisper import MaxWhisper

# tiny.en's published WER on LibriSpeech test-clean is 5.6%; the bar for these five
# LibriVox readings is 10% for both backends.
MAX_LIBRIVOX_WER = 0.10


@pytest.fixture(scope="module", params=["tiny.en", pytest.param("base", marks=pytest.mark.slow)])
def pretrained(request, engine, load_checkpoint):
    checkpoint = load_checkpoint(request.param)
    return checkpoint, MaxWhisper(checkpoint, engine)


@pytest.fixture(scope="module")
def transcripts(pretrained):
    checkpoint, candidate = pretrained
    return compare_transcripts(checkpoint, candidate, load_clips(speech_clips()))


def test_every_real_clip_gives_identical_tokens(transcripts):
    differing = {
        t["audio"]: t["first_divergent_token"] for t in transcripts if not t["tokens_equal"]
    }
    assert not differing, differing
    assert all(t["torch"]["tokens"] for t in transcripts)


def test_librivox_word_error_rate_for_both_backends(transcripts):
    librivox = [t for t in transcripts if t["audio"].startswith("librivox_0")]
    assert len(librivox) == 5
    wer = corpus_wer(librivox)["speech"]
    assert wer["torch"] <= MAX_LIBRIVOX_WER and wer["max"] <= MAX_LIBRIVOX_WER, wer


def test_multilingual_base_detects_english_without_being_told(pretrained, transcripts):
    checkpoint, _ = pretrained
    if not checkpoint.is_multilingual:
        assert transcription_language(checkpoint) == "en"
        return
    assert transcription_language(checkpoint) is None  # detected, as a user's run does
    assert {t["torch"]["language"] for t in transcripts} == {"en"}
    assert all(t["max"]["language"] == t["torch"]["language"] for t in transcripts)


def test_language_probabilities_agree(pretrained, float32_tolerances):
    checkpoint, candidate = pretrained
    languages = compare_languages(checkpoint, candidate, load_clips(speech_clips()))
    if not checkpoint.is_multilingual:
        assert languages is None
        return
    assert all(entry["same_language"] for entry in languages), languages
    failures = {
        entry["audio"]: float32_tolerances.violations(entry, "language") for entry in languages
    }
    assert not any(failures.values()), failures
