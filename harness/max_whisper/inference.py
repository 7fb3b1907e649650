"""openai-whisper's ``Inference`` interface served by the MAX text decoder.

``DecodingTask`` calls ``logits`` with the whole token sequence so far, as it does for
``PyTorchInference``; only the tokens beyond what the decoder has cached are fed to MAX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from whisper.decoding import Inference

from harness.max_whisper.text_decoder import MaxTextDecoder


class MaxInference(Inference):
    """Drop-in for ``PyTorchInference``: ``DecodingTask`` builds that one itself, so set
    ``task.inference`` (and, for beam search, ``task.decoder.inference``) to this after.

    ``read``: the positions whose logits the caller reads besides the last, if not every one.
    ``DecodingTask`` reads only ``sot_index`` (the no-speech probability) and the last position,
    so for a later window's ~90-token prompt MAX computes 2 rows of logits, not ~90; the rows
    nobody reads are NaN, so a reader of them would see it at once.
    """

    def __init__(self, decoder: MaxTextDecoder, read: Sequence[int] | None = None) -> None:
        self.decoder = decoder
        self.read = read
        self.decoder.reset()

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Logits of the tokens not yet cached: (batch, new tokens, vocab)."""
        offset = self.decoder.offset
        new = tokens[:, offset:].numpy()
        features = audio_features.numpy()
        n = new.shape[1]
        if self.read is None or n == 1:
            return torch.from_numpy(self.decoder.logits(new, features))
        rows = sorted({p - offset for p in self.read if offset <= p < offset + n} | {n - 1})
        picked = torch.from_numpy(self.decoder.logits(new, features, rows))
        logits = torch.full((new.shape[0], n, picked.shape[-1]), float("nan"))
        logits[:, rows] = picked
        return logits

    def rearrange_kv_cache(self, source_indices: list[int]) -> None:
        self.decoder.rearrange_kv_cache(source_indices)

    def cleanup_caching(self) -> None:
        self.decoder.reset()
