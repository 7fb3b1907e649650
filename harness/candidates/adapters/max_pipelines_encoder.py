"""MAX 26.7's own Whisper encoder (``max/pipelines/architectures/whisper/encoder.py``), run as is.

Unfinished upstream: built from a real checkpoint it fails four times (the report names each
failure and its line). ``FIXES`` are the four changes that make it build, each made here in the
adapter, never in MAX's file: ``--candidate max-pipelines-encoder:fixed`` applies them all.
"""

from __future__ import annotations

import sys
import types
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, TensorType

from harness.candidates.max_module import Fix, ModuleAdapter


def _import_encoder() -> types.ModuleType:
    """The file loaded by path: importing ``max.pipelines`` would pull in its serving stack
    (pydantic, …). It imports ``transformers`` for a type hint alone (``AutoConfig``); when
    transformers is not installed, a stub stands in for that one import and is removed after."""
    max_dir = Path(next(iter(find_spec("max").submodule_search_locations)))
    path = max_dir / "pipelines/architectures/whisper/encoder.py"
    spec = spec_from_file_location("max_pipelines_whisper_encoder", path)
    module = module_from_spec(spec)
    stub = find_spec("transformers") is None and "transformers" not in sys.modules
    if stub:
        sys.modules["transformers"] = types.SimpleNamespace(AutoConfig=object)
    try:
        spec.loader.exec_module(module)
    finally:
        if stub:
            del sys.modules["transformers"]
    return module


encoder = _import_encoder()


def hugging_face_config(dims) -> SimpleNamespace:
    """The ``WhisperConfig`` fields the encoder reads, from openai-whisper's dims."""
    return SimpleNamespace(
        d_model=dims.n_audio_state,
        encoder_attention_heads=dims.n_audio_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        encoder_layers=dims.n_audio_layer,
        num_mel_bins=dims.n_mels,
        max_source_positions=dims.n_audio_ctx,
    )


def construct(dims, dtype, device, config=hugging_face_config):
    return encoder.WhisperEncoder(config(dims), dtype, device)


# openai-whisper's encoder weight names -> the candidate's (Hugging Face-style) names
WEIGHT_NAMES = {
    "conv1.weight": "conv1.weight",
    "conv1.bias": "conv1.bias",
    "conv2.weight": "conv2.weight",
    "conv2.bias": "conv2.bias",
    "positional_embedding": "embed_positions.weight",
    "blocks.{i}.attn.query.weight": "layers.{i}.attention.wq.weight",
    "blocks.{i}.attn.query.bias": "layers.{i}.attention.wq.bias",
    "blocks.{i}.attn.key.weight": "layers.{i}.attention.wk.weight",
    "blocks.{i}.attn.value.weight": "layers.{i}.attention.wv.weight",
    "blocks.{i}.attn.value.bias": "layers.{i}.attention.wv.bias",
    "blocks.{i}.attn.out.weight": "layers.{i}.attention.wo.weight",
    "blocks.{i}.attn.out.bias": "layers.{i}.attention.wo.bias",
    "blocks.{i}.attn_ln.weight": "layers.{i}.attention_norm.weight",
    "blocks.{i}.attn_ln.bias": "layers.{i}.attention_norm.bias",
    "blocks.{i}.mlp.0.weight": "layers.{i}.mlp.fc1.weight",
    "blocks.{i}.mlp.0.bias": "layers.{i}.mlp.fc1.bias",
    "blocks.{i}.mlp.2.weight": "layers.{i}.mlp.fc2.weight",
    "blocks.{i}.mlp.2.bias": "layers.{i}.mlp.fc2.bias",
    "blocks.{i}.mlp_ln.weight": "layers.{i}.mlp_norm.weight",
    "blocks.{i}.mlp_ln.bias": "layers.{i}.mlp_norm.bias",
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
}

# the stage table's stages -> the sub-module that computes each
STAGES = {"conv1": "conv1", "conv2": "conv2", "blocks.{i}": "layers.{i}", "ln_post": "norm"}


def config_with_n_heads(dims) -> SimpleNamespace:
    """Fix 1 (line 34 reads ``n_heads``, which ``WhisperConfig`` lacks): provide it."""
    return SimpleNamespace(**vars(hugging_face_config(dims)), n_heads=dims.n_audio_head)


def conv_weights_kernel_first(name: str, weight: np.ndarray) -> np.ndarray:
    """Fix 2 (lines 154–173): ``max.nn.Conv1D`` holds (kernel, in, out), PyTorch (out, in, kernel)."""
    return weight.transpose(2, 1, 0) if name.endswith("weight") and weight.ndim == 3 else weight


def static_frames(input_type):
    """Fix 3 (line 217): adding the (n_audio_ctx, d) positional table to the conv output needs
    a static frame count; with a symbolic one MAX cannot tell the two lengths agree."""

    def declared(module, dims) -> TensorType:
        batch = input_type(module, dims).shape[0]
        return TensorType(DType.float32, [batch, dims.n_mels, 2 * dims.n_audio_ctx], DeviceRef.CPU())

    return declared


def channels_last(input_type):
    """Fix 4 (lines 193–201 vs 209): ``input_types`` declares (batch, n_mels, frames), but
    ``max.nn.Conv1D`` reads (batch, frames, channels)."""

    def declared(module, dims) -> TensorType:
        batch, n_mels, frames = input_type(module, dims).shape
        return TensorType(DType.float32, [batch, frames, n_mels], DeviceRef.CPU())

    return declared


def mel_channels_last(mel: np.ndarray) -> np.ndarray:
    return mel.transpose(0, 2, 1)  # (batch, frames, n_mels)


FIXES = (
    Fix("config attribute n_heads", lambda a: replace(a, construct=_construct_with_n_heads)),
    Fix("conv weights transposed", lambda a: replace(a, weight_layout=conv_weights_kernel_first)),
    Fix("static frame count", lambda a: replace(a, input_type=static_frames(a.input_type))),
    Fix(
        "mel transposed",
        lambda a: replace(
            a, input_type=channels_last(a.input_type), input_layout=mel_channels_last
        ),
    ),
)


def _construct_with_n_heads(dims, dtype, device):
    return construct(dims, dtype, device, config=config_with_n_heads)


ADAPTER = ModuleAdapter(
    name="max-pipelines-encoder",
    source=Path(encoder.__file__),
    construct=construct,
    weight_names=WEIGHT_NAMES,
    stages=STAGES,
    fixes=FIXES,
)
