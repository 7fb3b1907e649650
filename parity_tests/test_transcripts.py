"""Every fixture clip, audio file to tokens, through PyTorch and through MAX: identical tokens.

synthetic:tiny is covered by the report in test_cli.py; here the trained fixture model (another
size: width 128, 2+2 layers), whose transcripts are real words.
"""

import pytest

from harness.compare.transcripts import fixture_clips, load_clips, true_text
from harness.max_whisper.whisper import MaxWhisper
from harness.pipeline.transcribe import transcribe


@pytest.fixture(scope="module")
def models(engine, load_checkpoint):
    checkpoint = load_checkpoint("fixture:speech")
    return checkpoint, MaxWhisper(checkpoint, engine)


@pytest.mark.parametrize("path", fixture_clips(), ids=lambda p: p.name)
def test_max_tokens_equal_pytorch_tokens(models, path):
    checkpoint, candidate = models
    [(_, audio)] = load_clips([path])
    reference = transcribe(checkpoint.model, audio)
    assert transcribe(candidate, audio).tokens == reference.tokens
    assert reference.tokens or true_text(path) == ""


@pytest.mark.slow
def test_long_audio_is_decoded_window_by_window(models):
    checkpoint, candidate = models
    [(path, audio)] = load_clips([p for p in fixture_clips() if p.name == "long.wav"])
    assert len(audio) > 30 * 16000
    result = transcribe(candidate, audio)
    assert result.segments[-1]["seek"] > 0  # a second 30 s window was decoded
