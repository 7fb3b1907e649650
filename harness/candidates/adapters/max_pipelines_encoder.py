"""MAX 26.7's own Whisper encoder (``max/pipelines/architectures/whisper/encoder.py``), run as is.

Unfinished upstream: built from a real checkpoint it fails four times (the report names each
failure and its line). ``FIXES`` are the four changes that make it build, each made here in the
adapter, never in MAX's file: ``--candidate max-pipelines-encoder:fixed`` applies them all.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, TensorType

from harness.candidates.max_module import Fix, ModuleAdapter


def _import_encoder() -> ModuleType:
    """The file loaded by path: importing ``max.pipelines`` would pull in its serving stack
    (pydantic, …). It imports ``transformers`` for a type hint alone (``AutoConfig``); when
    transformers is not installed, a stub stands in for that one import and is removed after."""
    max_dir = Path(next(iter(find_spec("max").submodule_search_locations)))
    path = max_dir / "pipelines/architectures/whisper/encoder.py"
    spec = spec_from_file_location("max_pipelines_whisper_encoder", path)
    module = module_from_spec(spec)
    stub = "transformers" not in sys.modules and find_spec("transformers") is None
    if stub:
        sys.modules["transformers"] = SimpleNamespace(AutoConfig=object)
    try:
        spec.loader.exec_module(module)
    finally:
        if stub:
            del sys.modules["transformers"]
    return module


encoder = _import_encoder()


def hugging_face_config(dims) -> SimpleNamespace:
    """The Hugging Face ``WhisperConfig`` fields the encoder reads, from openai-whisper's dims."""
    return SimpleNamespace(
        d_model=dims.n_audio_state,
        encoder_attention_heads=dims.n_audio_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        encoder_layers=dims.n_audio_layer,
        num_mel_bins=dims.n_mels,
        max_source_positions=dims.n_audio_ctx,
    )


def construct(dims, dtype: DType, device: DeviceRef):
    return encoder.WhisperEncoder(hugging_face_config(dims), dtype, device)


# openai-whisper's encoder weight names -> the candidate's ({i}: the block)
WEIGHT_NAMES = {
    "conv1.weight": "conv1.weight",
    "conv1.bias": "conv1.bias",
    "conv2.weight": "conv2.weight",
    "conv2.bias": "conv2.bias",
    "positional_embedding": "embed_positions.weight",
    **{
        f"blocks.{{i}}.{ours}.{kind}": f"layers.{{i}}.{theirs}.{kind}"
        for ours, theirs in {
            "attn.query": "attention.wq",
            "attn.key": "attention.wk",
            "attn.value": "attention.wv",
            "attn.out": "attention.wo",
            "attn_ln": "attention_norm",
            "mlp.0": "mlp.fc1",
            "mlp.2": "mlp.fc2",
            "mlp_ln": "mlp_norm",
        }.items()
        for kind in ("weight", "bias")
        if (ours, kind) != ("attn.key", "bias")  # Whisper's keys have no bias
    },
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
}

# the stage table's stages -> the sub-module that computes each
STAGES = {"conv1": "conv1", "conv2": "conv2", "blocks.{i}": "layers.{i}", "ln_post": "norm"}


def construct_with_n_heads(dims, dtype: DType, device: DeviceRef):
    """Fix 1: line 34 reads ``n_heads``, which a ``WhisperConfig`` does not have."""
    config = SimpleNamespace(**vars(hugging_face_config(dims)), n_heads=dims.n_audio_head)
    return encoder.WhisperEncoder(config, dtype, device)


def conv_kernel_first(name: str, weight: np.ndarray) -> np.ndarray:
    """Fix 2 (lines 154–173): ``max.nn.Conv1D`` holds (kernel, in, out); PyTorch (out, in,
    kernel)."""
    return weight.transpose(2, 1, 0) if name.endswith("weight") and weight.ndim == 3 else weight


def static_frames(module, dims) -> TensorType:
    """Fix 3 (line 217): adding the (n_audio_ctx, state) positional table to the conv output
    needs a static frame count; with a symbolic one MAX cannot tell the lengths agree."""
    shape = ["batch_size", dims.n_mels, 2 * dims.n_audio_ctx]
    return TensorType(DType.float32, shape, DeviceRef.CPU())


def static_frames_channels_last(module, dims) -> TensorType:
    """Fix 4 (lines 193–201 vs 209): ``input_types`` declares (batch, n_mels, frames), but
    ``max.nn.Conv1D`` reads (batch, frames, channels)."""
    shape = ["batch_size", 2 * dims.n_audio_ctx, dims.n_mels]
    return TensorType(DType.float32, shape, DeviceRef.CPU())


def mel_channels_last(mel: np.ndarray) -> np.ndarray:
    return mel.transpose(0, 2, 1)  # (batch, frames, n_mels)


FIXES = (
    Fix("config attribute n_heads", lambda a: replace(a, construct=construct_with_n_heads)),
    Fix("conv weights transposed", lambda a: replace(a, weight_layout=conv_kernel_first)),
    Fix("static frame count", lambda a: replace(a, input_type=static_frames)),
    Fix(
        "mel transposed",
        lambda a: replace(
            a, input_type=static_frames_channels_last, input_layout=mel_channels_last
        ),
    ),
)

ADAPTER = ModuleAdapter(
    name="max-pipelines-encoder",
    source=Path(encoder.__file__),
    construct=construct,
    weight_names=WEIGHT_NAMES,
    stages=STAGES,
    fixes=FIXES,
)
