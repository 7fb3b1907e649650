"""The stage table against what it stands for: openai-whisper's module tree and the tracer."""

import numpy as np
import pytest

from harness.reference import tracer
from harness.stages import MEL, TOKENS, all_stages, decoder_stages, encoder_stages, stage_named


@pytest.mark.parametrize("spec", ["synthetic:tiny", "synthetic:base"])
def test_the_tracer_records_exactly_the_table_in_pipeline_order(load_checkpoint, spec):
    checkpoint = load_checkpoint(spec)
    dims, model = checkpoint.dims, checkpoint.model
    mel = np.random.default_rng(0).standard_normal((1, dims.n_mels, 2 * dims.n_audio_ctx))
    encoder = tracer.trace_encoder(model.encoder, mel.astype(np.float32))
    tokens = np.array([[50257, 50362, 440, 1349]])
    decoder = tracer.trace_decoder(model.decoder, tokens, encoder["ln_post"])
    assert list(encoder) == [MEL, *(s.name for s in encoder_stages(dims.n_audio_layer))]
    assert list(decoder) == [TOKENS, *(s.name for s in decoder_stages(dims.n_text_layer))]


def test_every_stage_names_weights_that_exist(load_checkpoint):
    checkpoint = load_checkpoint("synthetic:tiny")
    state = checkpoint.model.state_dict()
    for stage in all_stages(checkpoint.dims):
        assert any(name.startswith(stage.prefix) for name in state), stage
    assert stage_named(checkpoint.dims, "decoder.blocks.3").prefix == "decoder.blocks.3."
    assert stage_named(checkpoint.dims, "blocks.3").prefix == "encoder.blocks.3."
    assert stage_named(checkpoint.dims, "decoder.blocks.1").reads_audio
    assert not stage_named(checkpoint.dims, "blocks.1").reads_audio


def test_a_stage_the_model_lacks_is_refused_by_name(load_checkpoint):
    dims = load_checkpoint("synthetic:tiny").dims
    with pytest.raises(ValueError, match="blocks.4"):
        stage_named(dims, "blocks.4")
