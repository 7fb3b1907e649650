"""``MaxWhisper`` computed by the parity stage graphs: greedy decoding with no fused graph.

For a model built only to be checked stage by stage (a planted fault, ``harness/faults/``), the
stage graphs are the ones its checks compile; the fused encoder and the cached decoder step
would cost each such model three more cold compiles.
"""

from __future__ import annotations

import torch
from whisper.decoding import DecodingOptions, DecodingResult, Inference

from harness.max_whisper.whisper import MaxDecodingTask, MaxWhisper


class StageWhisper(MaxWhisper):
    """``MaxWhisper`` computed by the parity stage graphs, chained and uncached.

    Each decoding step runs the whole token sequence through the decoder stages; only the first
    step's logits are computed at every position (decoding reads the start-of-transcript one).
    """

    def load(self) -> None:
        """Nothing ahead of time: each stage graph is compiled (or found) when it first runs,
        never the fused encoder and the decoding graphs that ``MaxWhisper.load`` compiles."""

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.float().numpy()
        for stage in self.audio_encoder.stages():
            x = self.audio_encoder.run_stage(stage, x)
        return torch.from_numpy(x)

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor, last_only=False):
        x, xa = tokens.numpy(), audio_features.numpy()
        for stage in self.text_decoder.stages():
            if stage.kind == "ln" and last_only:  # the logits of the last token only
                x = x[:, -1:]
            x = self.text_decoder.run_stage(stage, x, xa)
        return torch.from_numpy(x)

    @torch.no_grad()
    def decode(self, mel: torch.Tensor, options: DecodingOptions) -> DecodingResult:
        """One 30 s window (n_mels, frames), as ``transcribe`` asks for it."""
        task = MaxDecodingTask(self, options)
        task.inference = _StageInference(self)
        return task.run(mel[None])[0]


class _StageInference(Inference):
    """openai-whisper's ``Inference`` without a cache: every call recomputes the sequence."""

    def __init__(self, model: StageWhisper) -> None:
        self.model, self.calls = model, 0

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model.logits(tokens, audio_features, last_only=self.calls > 1)

    def rearrange_kv_cache(self, source_indices: list[int]) -> None:
        """Nothing cached, nothing to reorder."""
