"""The MAX text decoder against openai-whisper: stages, the KV-cached path, and decoding itself.

The decoder reads what openai-whisper's encoder makes of the report's clip (25 s of LibriVox
reading), and is teacher-forced with that clip's true transcript, as the parity report does.
"""

import numpy as np
import pytest
import torch
from whisper.decoding import DecodingOptions, DecodingTask

from harness.compare.decoder_parity import MIN_STEPS, decoder_parity, prompt_length, teacher_tokens
from harness.compare.transcripts import true_text
from harness.inputs.audio import load_audio
from harness.max_whisper.inference import MaxInference
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.reference import tracer
from harness.report.build import DEFAULT_AUDIO

MODELS = [
    "synthetic:tiny",
    pytest.param("synthetic:base", marks=pytest.mark.slow),
    "tiny.en",
    pytest.param("base", marks=pytest.mark.slow),
]
TEXT = true_text(DEFAULT_AUDIO)

# Two MAX computations of the same logits (cached step graph vs the chained stage graphs) differ
# by float32 round-off only: measured rel_l2 6.8e-7 on synthetic:tiny; 1e-5 is the chained bound.
CACHED_VS_FULL_REL_L2 = 1e-5
# Decoding the same tokens in other chunkings (several new tokens per step, a reused cache)
# changes only the order of float32 sums: measured max |Δlogit| ~1e-5 on logits of scale ~10.
REPLAY_ATOL = 1e-4


@pytest.fixture(scope="module", params=MODELS)
def setup(request, engine, load_checkpoint):
    checkpoint = load_checkpoint(request.param)
    mel = tracer.window_mel(load_audio(DEFAULT_AUDIO), checkpoint.dims.n_mels)
    audio_features = tracer.trace_encoder(checkpoint.model.encoder, mel)["ln_post"]
    candidate = MaxTextDecoder(checkpoint.dims, checkpoint.model.state_dict(), engine)
    return checkpoint, candidate, audio_features


@pytest.fixture(scope="module")
def parity(setup, float32_tolerances):
    checkpoint, candidate, audio_features = setup
    tokens = teacher_tokens(checkpoint, TEXT)
    return decoder_parity(checkpoint, candidate, audio_features, tokens, float32_tolerances)


def test_stage_names_follow_the_module_tree(parity, setup):
    n_layer = setup[0].dims.n_text_layer
    blocks = [f"decoder.blocks.{i}" for i in range(n_layer)]
    names = [s["stage"] for s in parity["stages"]]
    assert names == ["decoder.embed", *blocks, "decoder.ln", "logits"]


@pytest.mark.parametrize("kind", ["isolated", "chained"])
def test_every_stage_within_float32_tolerance(parity, float32_tolerances, kind):
    failures = {s["stage"]: float32_tolerances.violations(s[kind], kind) for s in parity["stages"]}
    assert not any(failures.values()), failures


def test_teacher_forced_cached_logits_agree(parity, float32_tolerances):
    assert parity["steps"] >= MIN_STEPS
    assert parity["top1_agreement"] == 1.0
    assert not float32_tolerances.violations(parity, "teacher_forced"), parity["max_kl"]
    assert parity["min_top2_gap"] > 0  # a real sentence, not a tie-free toy


def test_cached_logits_equal_the_full_sequence_stages(parity):
    assert parity["cached_vs_full"]["rel_l2"] < CACHED_VS_FULL_REL_L2, parity["cached_vs_full"]


def test_any_chunking_of_the_tokens_gives_the_same_logits(setup):
    """Several new tokens per step exercise the causal mask at a non-zero offset; a second
    sequence after ``reset`` reuses the cache buffers, whose stale rows must stay masked."""
    checkpoint, candidate, audio_features = setup
    tokens = teacher_tokens(checkpoint, TEXT)[:, :20]
    candidate.reset()
    whole = candidate.logits(tokens, audio_features)
    candidate.reset()
    bounds = [0, prompt_length(checkpoint), 7, 8, 13, tokens.shape[1]]
    spans = zip(bounds, bounds[1:], strict=False)
    chunks = [candidate.logits(tokens[:, a:b], audio_features) for a, b in spans]
    candidate.reset()
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=0, atol=REPLAY_ATOL)


def test_logits_of_chosen_rows_only(setup):
    """A later window's prompt: decoding reads the logits of two positions of ~90, so MAX
    computes those rows alone, equal to the same rows of the full computation; ``MaxInference``
    leaves the others NaN, and the next token's call is unchanged."""
    checkpoint, candidate, audio_features = setup
    tokens = teacher_tokens(checkpoint, TEXT)[:, :12]
    candidate.reset()
    whole = candidate.logits(tokens, audio_features)
    candidate.reset()
    rows = [3, 10]
    np.testing.assert_allclose(
        candidate.logits(tokens[:, :11], audio_features, rows), whole[:, rows], atol=REPLAY_ATOL
    )
    np.testing.assert_allclose(
        candidate.logits(tokens[:, 11:], audio_features), whole[:, 11:], atol=REPLAY_ATOL
    )
    inference = MaxInference(candidate, read=[3])
    logits = inference.logits(torch.from_numpy(tokens[:, :11]), torch.from_numpy(audio_features))
    inference.cleanup_caching()
    np.testing.assert_allclose(logits[:, [3, 10]].numpy(), whole[:, [3, 10]], atol=REPLAY_ATOL)
    assert torch.isnan(logits[:, [0, 1, 2, 4, 9]]).all()
    with pytest.raises(ValueError, match="not indices"):
        candidate.logits(tokens, audio_features, [12])
    candidate.reset()


def test_the_cache_refuses_tokens_beyond_the_text_context(setup):
    checkpoint, candidate, audio_features = setup
    candidate.reset()
    too_many = np.zeros((1, checkpoint.dims.n_text_ctx + 1), dtype=np.int64)
    with pytest.raises(ValueError, match="exceed n_text_ctx"):
        candidate.logits(too_many, audio_features)
    candidate.reset()


def test_rearranging_the_cache_reorders_beams(setup):
    checkpoint, candidate, audio_features = setup
    tokens = teacher_tokens(checkpoint, TEXT)[:, :8]
    batch = np.concatenate([tokens, tokens[:, ::-1].copy()])  # two different beams
    candidate.reset()
    candidate.logits(batch[:, :7], audio_features)
    candidate.rearrange_kv_cache([1, 0])
    swapped = candidate.logits(batch[::-1, 7:8].copy(), audio_features)
    candidate.reset()
    expected = candidate.logits(batch[::-1].copy(), audio_features)[:, -1:]
    candidate.reset()
    np.testing.assert_allclose(swapped, expected, rtol=0, atol=REPLAY_ATOL)


@pytest.mark.parametrize("beam_size", [None, 3])
def test_decoding_through_max_inference_matches_pytorch(setup, beam_size):
    """openai-whisper's own DecodingTask, greedy and beam search, only the Inference swapped."""
    checkpoint, candidate, audio_features = setup
    options = DecodingOptions(
        language="en", fp16=False, without_timestamps=True, sample_len=40, beam_size=beam_size
    )
    features = torch.from_numpy(audio_features)
    expected = DecodingTask(checkpoint.model, options).run(features)[0]
    task = DecodingTask(checkpoint.model, options)
    task.inference = MaxInference(candidate)
    if beam_size:
        task.decoder.inference = task.inference  # beam search holds its own reference
    got = task.run(features)[0]
    assert got.tokens == expected.tokens and len(got.tokens) > 0
    assert got.avg_logprob == pytest.approx(expected.avg_logprob, abs=1e-4)
