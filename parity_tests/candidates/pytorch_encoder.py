"""A candidate that is not MAX at all: openai-whisper's own PyTorch modules, stage by stage,
exposing each stage's input (a ``StageCandidate``). Compared with itself it must agree."""

import numpy as np
import torch
import torch.nn.functional as F
from whisper.model import AudioEncoder

from harness.stages import encoder_stages


class PyTorchEncoder:
    def __init__(self, dims, state_dict):
        self.dims = dims
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        prefix = "encoder."
        ours = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        self.encoder.load_state_dict(ours)

    def stages(self):
        return encoder_stages(self.dims.n_audio_layer)

    @torch.no_grad()
    def run_stage(self, stage, x):
        x, e = torch.from_numpy(x), self.encoder
        if stage.kind == "conv1":  # (batch, n_mels, frames) -> (batch, frames, state)
            y = F.gelu(e.conv1(x)).transpose(1, 2)
        elif stage.kind == "conv2":
            y = F.gelu(e.conv2(x.transpose(1, 2))).transpose(1, 2) + e.positional_embedding
        elif stage.kind == "block":
            y = e.blocks[stage.block](x)
        else:
            y = e.ln_post(x)
        return np.ascontiguousarray(y.numpy())

    @torch.no_grad()
    def __call__(self, mel):
        return self.encoder(torch.from_numpy(mel)).numpy()


def build_candidate(dims, state_dict):
    return PyTorchEncoder(dims, state_dict)
