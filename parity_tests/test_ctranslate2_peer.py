"""CTranslate2 as a peer: its model folder is the checkpoint's own weights, its values line up.

Seeded and quick (no MAX graph compiles): synthetic:tiny written out in CTranslate2's format must
run in CTranslate2 float32 at float32 round-off from PyTorch, and its teacher-forced logits must
land on PyTorch's positions; the pretrained package's folder is used as shipped.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import whisper

from harness.compare.decoder_parity import prompt_length, step_metrics, teacher_tokens
from harness.compare.metrics import compare
from harness.compare.transcripts import true_text
from harness.errors import HarnessError
from harness.inputs.audio import load_audio
from harness.peers import ctranslate2 as ctranslate2_peer
from harness.reference import tracer
from harness.report.build import DEFAULT_AUDIO

THREADS = 2


@pytest.fixture(scope="module")
def synthetic(load_checkpoint):
    checkpoint = load_checkpoint("synthetic:tiny")
    peer_float32, peer_int8 = ctranslate2_peer.peers(checkpoint, THREADS)
    mel = tracer.window_mel(load_audio(DEFAULT_AUDIO), checkpoint.dims.n_mels)
    with torch.no_grad():
        features = checkpoint.model.encoder(torch.from_numpy(mel))
    return checkpoint, peer_float32, peer_int8, mel, features.numpy()


def test_a_synthetic_checkpoint_is_written_out_with_its_tokenizer(synthetic):
    checkpoint, peer, _, _, _ = synthetic
    assert peer.folder.name.startswith(f"ctranslate2-model-{checkpoint.sha256[:16]}")
    files = {p.name for p in peer.folder.iterdir()}
    assert files == {"model.bin", "tokenizer.json", "config.json", "vocabulary.json"}
    assert ctranslate2_peer.model_folder(checkpoint) == peer.folder  # written once


def test_ctranslate2_float32_runs_the_same_weights_as_pytorch(synthetic):
    _, peer, _, mel, features = synthetic
    assert compare(peer.encode(mel), features)["rel_l2"] < 1e-5


def test_int8_is_a_different_model_and_the_metrics_show_it(synthetic):
    _, peer_float32, peer_int8, mel, features = synthetic
    float32 = compare(peer_float32.encode(mel), features)["rel_l2"]
    assert compare(peer_int8.encode(mel), features)["rel_l2"] > 100 * float32


def test_teacher_forced_logits_land_on_pytorchs_positions(synthetic):
    checkpoint, peer, _, _, features = synthetic
    tokens = teacher_tokens(checkpoint, true_text(DEFAULT_AUDIO))
    start = prompt_length(checkpoint)
    with torch.no_grad():
        reference = checkpoint.model.logits(torch.from_numpy(tokens), torch.from_numpy(features))
    logits = peer.next_token_logits(tokens, features, start)
    assert logits.shape == (1, tokens.shape[1] - start + 1, checkpoint.dims.n_vocab)
    steps = step_metrics(logits, reference.numpy()[:, start - 1 :])
    assert all(s["top1_match"] for s in steps)
    assert max(s["rel_l2"] for s in steps) < 1e-5
    shifted = step_metrics(logits[:, 1:], reference.numpy()[:, start - 1 : -1])
    assert max(s["rel_l2"] for s in shifted) > 1e-2  # one position off is caught


def test_decoding_is_timed_per_token(synthetic):
    checkpoint, peer, _, _, features = synthetic
    prompt = list(whisper.tokenizer.get_tokenizer(True).sot_sequence_including_notimestamps)
    peer.decode_seconds(prompt, features, 32)  # the first call also loads the model
    assert peer.decode_seconds(prompt, features, 32) > 0


def test_decoding_times_two_calls_after_an_untimed_one(synthetic, monkeypatch):
    """A one-token call takes the cost of the first call after another engine's turn, as the
    prompt's untimed pass does for PyTorch and MAX; the marginal cost comes from the next two."""
    checkpoint, peer, _, _, features = synthetic
    prompt = list(whisper.tokenizer.get_tokenizer(True).sot_sequence_including_notimestamps)
    generate, counts = peer.generate, []
    monkeypatch.setattr(
        peer, "generate", lambda f, p, n, **k: counts.append(n) or generate(f, p, n, **k)
    )
    peer.decode_seconds(prompt, features, 32)
    assert counts == [1, 8, 32]


def test_the_pretrained_package_folder_is_used_as_shipped(load_checkpoint):
    checkpoint = load_checkpoint("tiny.en")
    folder = ctranslate2_peer.model_folder(checkpoint)
    assert str(folder / "model.bin") == checkpoint.source["files"][0]


def test_a_vocabulary_without_a_tokenizer_is_one_clear_error(load_checkpoint, monkeypatch):
    checkpoint = replace(load_checkpoint("synthetic:tiny"))  # a copy, whose hash we set:
    vars(checkpoint)["sha256"] = "0" * 64  # no folder was written under this one
    monkeypatch.setattr(ctranslate2_peer, "SIDE_FILES_FROM", {})
    with pytest.raises(HarnessError, match="no tokenizer.json/config.json for CTranslate2"):
        ctranslate2_peer.model_folder(checkpoint)


def test_faster_whisper_transcribes_like_openai_whisper_on_real_speech(load_checkpoint):
    checkpoint = load_checkpoint("tiny.en")
    peer = ctranslate2_peer.peers(checkpoint, THREADS)[0]
    audio = load_audio(DEFAULT_AUDIO.parent / "librivox_0880.wav")
    result = peer.transcribe(audio)
    reference = whisper.transcribe(checkpoint.model, audio, temperature=0.0, fp16=False)
    tokens = [t for s in reference["segments"] for t in s["tokens"]]
    assert result.tokens == tokens
    assert result.text == reference["text"]
