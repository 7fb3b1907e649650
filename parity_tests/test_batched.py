"""Long audio as one batch (``harness/pipeline/batched.py``): where the chunks are cut, MAX's
batched transcript against PyTorch's on the same algorithm, and faster-whisper on the same chunks.

The audio is the speed section's long audio (``harness/speed/long_audio.py``): the real
LibriVox, card and command clips, then espeak-ng's, ~100 s in four chunks.
"""

import numpy as np
import pytest
import torch
from whisper.audio import SAMPLE_RATE

from harness.compare.transcripts import SPEECH, true_text
from harness.compare.wer import word_error_rate
from harness.max_whisper.whisper import MaxWhisper
from harness.peers import ctranslate2 as ctranslate2_peer
from harness.pipeline.batched import CHUNK_S, chunk_bounds, transcribe_batched
from harness.speed.long_audio import long_audio

# the bar for tiny.en on the LibriVox readings (test_pretrained.py)
MAX_LIBRIVOX_WER = 0.10


def test_chunks_cover_the_audio_and_are_cut_in_its_pauses():
    rng = np.random.default_rng(0)
    speech = rng.normal(0, 0.1, 80 * SAMPLE_RATE).astype(np.float32)
    pauses = [27.0, 52.5, 79.0]  # seconds: one second of silence starting at each
    for start in pauses:
        speech[int(start * SAMPLE_RATE) : int((start + 1) * SAMPLE_RATE)] = 0
    bounds = chunk_bounds(speech)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(speech)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(0 < end - start <= CHUNK_S * SAMPLE_RATE for start, end in bounds)
    cuts = [end / SAMPLE_RATE for _, end in bounds[:-1]]
    assert len(cuts) == 2  # the third pause falls in the last chunk, under 30 s long
    for cut, pause in zip(cuts, pauses, strict=False):
        assert pause <= cut <= pause + 1


def test_audio_within_one_window_is_one_chunk():
    assert chunk_bounds(np.zeros(CHUNK_S * SAMPLE_RATE, dtype=np.float32)) == [
        (0, CHUNK_S * SAMPLE_RATE)
    ]


@pytest.fixture(scope="module")
def tiny_en(load_checkpoint, engine):
    checkpoint = load_checkpoint("tiny.en")
    return checkpoint, MaxWhisper(checkpoint, engine)


@pytest.fixture(scope="module")
def long():
    return long_audio()


@pytest.fixture(scope="module")
def reference(tiny_en, long):
    return transcribe_batched(tiny_en[0].model, long.samples, batch_size=4)


def test_long_audio_is_cut_in_silence(long):
    """Four chunks, each cut in a pause: the 0.1 s around every cut is digital silence (the gap
    between two clips, or a pause between espeak-ng's sentences), where the audio's RMS is 0.07."""
    bounds = chunk_bounds(long.samples)
    assert len(bounds) == 4
    half = int(0.05 * SAMPLE_RATE)
    for _, cut in bounds[:-1]:
        assert not np.any(long.samples[cut - half : cut + half]), cut / SAMPLE_RATE


def test_max_batched_transcript_is_pytorchs(tiny_en, long, reference):
    """The same chunks through openai-whisper's decode, batch of 4: MAX writes PyTorch's tokens,
    and the first chunk, the LibriVox reading, is transcribed as well as the clip alone."""
    transcript = transcribe_batched(tiny_en[1], long.samples, batch_size=4)
    assert transcript.tokens == reference.tokens
    assert [s["start"] for s in transcript.segments] == [s["start"] for s in reference.segments]
    librivox = true_text(SPEECH / "librivox_window.wav")
    assert word_error_rate(transcript.segments[0]["text"], librivox) <= MAX_LIBRIVOX_WER


def test_batches_of_two_write_what_one_batch_writes(tiny_en, long, reference):
    """Rows of a batch are independent: the chunks two at a time give the same tokens."""
    assert transcribe_batched(tiny_en[1], long.samples, batch_size=2).tokens == reference.tokens


def test_faster_whisper_decodes_the_same_chunks(tiny_en, long, reference):
    """faster-whisper's batched pipeline, handed the chunks, writes one segment per chunk. Its
    words are not always PyTorch's even in float32: it computes its own log-mel of each chunk
    (its own STFT, padded after the mel rather than in the audio), so only the LibriVox chunk's
    word error rate is held to the bar."""
    checkpoint = tiny_en[0]
    peer = ctranslate2_peer.peers(checkpoint, torch.get_num_threads())[0]
    assert peer.compute_type == "float32"
    transcript = peer.transcribe_batched(long.samples, chunk_bounds(long.samples), batch_size=4)
    starts = [s["start"] for s in transcript.segments]
    assert starts == pytest.approx([s["start"] for s in reference.segments], abs=0.01)
    librivox = true_text(SPEECH / "librivox_window.wav")
    assert word_error_rate(transcript.segments[0]["text"], librivox) <= MAX_LIBRIVOX_WER
