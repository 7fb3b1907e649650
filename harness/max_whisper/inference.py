"""openai-whisper's ``Inference`` interface served by the MAX text decoder.

``DecodingTask`` calls ``logits`` with the whole token sequence so far, as it does for
``PyTorchInference``; only the tokens beyond what the decoder has cached are fed to MAX.
"""

from __future__ import annotations

import torch
from whisper.decoding import Inference

from harness.max_whisper.text_decoder import MaxTextDecoder


class MaxInference(Inference):
    """Drop-in for ``PyTorchInference``: ``DecodingTask`` builds that one itself, so set
    ``task.inference`` (and, for beam search, ``task.decoder.inference``) to this after."""

    def __init__(self, decoder: MaxTextDecoder) -> None:
        self.decoder = decoder
        self.decoder.reset()

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Logits of the tokens not yet cached: (batch, new tokens, vocab)."""
        new = tokens[:, self.decoder.offset :]
        return torch.from_numpy(self.decoder.logits(new.numpy(), audio_features.numpy()))

    def rearrange_kv_cache(self, source_indices: list[int]) -> None:
        self.decoder.rearrange_kv_cache(source_indices)

    def cleanup_caching(self) -> None:
        self.decoder.reset()
