"""Checkpoint resolution: synthetic checkpoints are reproducible, bad files fail in one line."""

from dataclasses import asdict

import pytest
import torch

from harness.errors import HarnessError
from harness.inputs import checkpoints, synthetic


def test_synthetic_is_same_bytes_every_time(tmp_path, monkeypatch):
    first = synthetic.synthetic_checkpoint("tiny").read_bytes()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a fresh cache regenerates the file
    second = synthetic.synthetic_checkpoint("tiny")
    assert second.parent.parent == tmp_path
    assert second.read_bytes() == first


def test_synthetic_sets_every_tensor_deterministically():
    dims = synthetic.official_dims("tiny")
    a = synthetic.synthetic_state_dict(dims, seed=0)
    b = synthetic.synthetic_state_dict(dims, seed=0)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["decoder.positional_embedding"].abs().max() < 1  # drawn, not uninitialised memory
    assert not torch.equal(a["encoder.ln_post.weight"], torch.ones(384))


@pytest.mark.parametrize(
    ("name", "n_mels", "n_vocab", "state", "layers"),
    [
        ("tiny", 80, 51865, 384, 4),
        ("base.en", 80, 51864, 512, 6),
        ("large-v3", 128, 51866, 1280, 32),
    ],
)
def test_official_dims(name, n_mels, n_vocab, state, layers):
    dims = synthetic.official_dims(name)
    assert (dims.n_mels, dims.n_vocab, dims.n_audio_state, dims.n_text_layer) == (
        n_mels,
        n_vocab,
        state,
        layers,
    )


def test_turbo_has_four_decoder_layers():
    assert synthetic.official_dims("turbo").n_text_layer == 4


def test_synthetic_loads_through_openai_whisper(load_checkpoint):
    checkpoint = load_checkpoint("synthetic:tiny")
    assert checkpoint.weights == "synthetic"
    assert checkpoint.dims == synthetic.official_dims("tiny")
    assert len(checkpoint.sha256) == 64


def _write(path, payload):
    torch.save(payload, path)
    return str(path)


@pytest.fixture
def tiny_payload():
    dims = synthetic.official_dims("tiny")
    path = synthetic.synthetic_checkpoint("tiny")
    state = torch.load(path, weights_only=True)["model_state_dict"]
    return {"dims": asdict(dims), "model_state_dict": state}


def test_a_real_format_file_loads_by_path(tmp_path, tiny_payload):
    checkpoint = checkpoints.load(_write(tmp_path / "mine.pt", tiny_payload))
    assert checkpoint.weights == "pretrained" and checkpoint.dims.n_audio_state == 384


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda p, payload: str(p / "absent.pt"), "checkpoint file not found"),
        (
            lambda p, payload: (p / "text.pt").write_text("hello") and str(p / "text.pt"),
            "not a readable",
        ),
        (lambda p, payload: _truncated(p, payload), "not a readable"),
        (lambda p, payload: _write(p / "list.pt", [1, 2]), "not an openai-whisper checkpoint"),
        (
            lambda p, payload: _without(p, payload, "encoder.conv1.bias"),
            "missing encoder.conv1.bias",
        ),
        (lambda p, payload: _misshapen(p, payload), "encoder.ln_post.weight has shape (10,)"),
    ],
    ids=[
        "missing",
        "not-a-checkpoint",
        "truncated",
        "wrong-structure",
        "missing-tensor",
        "misshapen",
    ],
)
def test_bad_checkpoints_fail_in_one_line(tmp_path, tiny_payload, make_bad, message):
    path = make_bad(tmp_path, tiny_payload)
    with pytest.raises(HarnessError) as error:
        checkpoints.load(path)
    assert message in str(error.value)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _truncated(directory, payload):
    path = directory / "truncated.pt"
    torch.save(payload, path)
    path.write_bytes(path.read_bytes()[:100_000])
    return str(path)


def _without(directory, payload, key):
    state = dict(payload["model_state_dict"])
    del state[key]
    return _write(directory / "missing.pt", {**payload, "model_state_dict": state})


def _misshapen(directory, payload):
    state = dict(payload["model_state_dict"], **{"encoder.ln_post.weight": torch.ones(10)})
    return _write(directory / "misshapen.pt", {**payload, "model_state_dict": state})


@pytest.mark.parametrize("spec", ["tiny-xl", "synthetic:huge", "fixture:nothing"])
def test_unknown_names(spec):
    with pytest.raises(HarnessError, match="unknown"):
        checkpoints.load(spec)
