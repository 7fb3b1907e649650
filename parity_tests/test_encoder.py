"""Every encoder stage of MAX against openai-whisper, isolated and chained, and the fused graph."""

import numpy as np
import pytest

from harness.compare.stage_walk import encoder_parity
from harness.errors import HarnessError
from harness.inputs.audio import load_audio
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.reference import tracer
from harness.report.build import DEFAULT_AUDIO

# Random weights of two sizes, and pretrained Whisper of the same sizes (the pinned weight
# packages when OpenAI's files are not cached): real weights have outlier channels and
# confident activations that random ones lack.
MODELS = [
    "synthetic:tiny",
    pytest.param("synthetic:base", marks=pytest.mark.slow),
    "tiny.en",
    pytest.param("base", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=MODELS)
def checkpoint(request, load_checkpoint):
    return load_checkpoint(request.param)


@pytest.fixture(scope="module")
def parity(checkpoint, engine, float32_tolerances):
    mel = tracer.window_mel(load_audio(DEFAULT_AUDIO), checkpoint.dims.n_mels)
    reference = tracer.trace_encoder(checkpoint.model.encoder, mel)
    candidate = MaxAudioEncoder(checkpoint.dims, checkpoint.state_dict(), engine)
    return encoder_parity(candidate, reference, float32_tolerances)


def test_stage_names_follow_the_module_tree(parity, checkpoint):
    names = [s["stage"] for s in parity["stages"]]
    n_layers = checkpoint.dims.n_audio_layer
    assert names == ["conv1", "conv2", *[f"blocks.{i}" for i in range(n_layers)], "ln_post"]


def test_every_stage_isolated_within_float32_tolerance(parity, float32_tolerances):
    failures = {
        s["stage"]: float32_tolerances.violations(s["isolated"], "isolated")
        for s in parity["stages"]
    }
    assert not any(failures.values()), failures
    assert parity["first_divergent_stage"] is None


def test_every_stage_chained_within_float32_tolerance(parity, float32_tolerances):
    failures = {
        s["stage"]: float32_tolerances.violations(s["chained"], "chained") for s in parity["stages"]
    }
    assert not any(failures.values()), failures


def test_fused_encoder_within_float32_tolerance(parity, float32_tolerances):
    assert not float32_tolerances.violations(parity["fused"], "fused"), parity["fused"]


def test_tolerances_are_the_ones_promised(float32_tolerances):
    """The foundation's bar: isolated rel_l2 <= 2e-6 and cosine >= 0.999999, drift <= 1e-5."""
    assert float32_tolerances.limit("isolated", "rel_l2") <= 2e-6
    assert float32_tolerances.limit("isolated", "cosine") >= 0.999999
    assert float32_tolerances.limit("chained", "rel_l2") <= 1e-5
    assert float32_tolerances.limit("fused", "rel_l2") <= 1e-5


@pytest.mark.parametrize("shape", [(1, 80, 2000), (1, 128, 3000), (80, 3000)])
def test_a_mel_of_the_wrong_shape_is_a_clear_error(shape, engine, load_checkpoint):
    checkpoint = load_checkpoint("synthetic:tiny")
    candidate = MaxAudioEncoder(checkpoint.dims, checkpoint.state_dict(), engine)
    with pytest.raises(HarnessError, match=r"mel has shape .* takes \(batch, 80, 3000\)"):
        candidate(np.zeros(shape, dtype=np.float32))
