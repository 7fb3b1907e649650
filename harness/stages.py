"""The stage table: every stage boundary the harness compares, defined once.

A stage is where MAX's pipeline and openai-whisper's meet: the tracer records PyTorch's activation
there, MAX runs the graph of its ``kind``, the float64 arbiter recomputes it, the noise floor is
measured at it and faults are caught at it. Every one of those keys off this table, never off
the spelling of a name.

Names are the keys of traces and ``parity.json``: encoder stages bare (``conv1``, ``blocks.0``,
``ln_post``), decoder stages under ``decoder.`` (and ``logits``). They are kept as they were so
that baselines written before this table still compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from harness.openai_whisper import ModelDimensions

Side = Literal["encoder", "decoder"]


@dataclass(frozen=True)
class Stage:
    """One stage boundary: its name, the graph kind that computes it, the model half it is in,
    and its block index (None outside the blocks)."""

    name: str
    kind: str  # conv1, conv2, block, ln_post (encoder); embed, block, ln, logits (decoder)
    side: Side
    block: int | None = None

    @property
    def prefix(self) -> str:
        """Its weights' prefix in openai-whisper's state dict (``encoder.blocks.0.``)."""
        return f"{self.side}." if self.block is None else f"{self.side}.blocks.{self.block}."

    @property
    def reads_audio(self) -> bool:
        """Decoder blocks also take the encoder's output (cross-attention)."""
        return self.side == "decoder" and self.kind == "block"


MEL = "mel"  # the encoder's input in a trace
TOKENS = "tokens"  # the decoder's input in a trace


def encoder_stages(n_layer: int) -> list[Stage]:
    """``conv1``, ``conv2``, ``blocks.i`` ..., ``ln_post``: pipeline order."""
    return _side("encoder", ["conv1", "conv2"], "blocks", n_layer, ["ln_post"])


def decoder_stages(n_layer: int) -> list[Stage]:
    """``decoder.embed``, ``decoder.blocks.i`` ..., ``decoder.ln``, ``logits``: pipeline order."""
    return _side("decoder", ["decoder.embed"], "decoder.blocks", n_layer, ["decoder.ln", "logits"])


def _side(
    side: Side, before: list[str], blocks: str, n_layer: int, after: list[str]
) -> list[Stage]:
    """A model half's stages; outside the blocks a stage's kind is its name's last part."""
    outside = [Stage(name, name.rsplit(".", 1)[-1], side) for name in before + after]
    inside = [Stage(f"{blocks}.{i}", "block", side, i) for i in range(n_layer)]
    return outside[: len(before)] + inside + outside[len(before) :]


def all_stages(dims: ModelDimensions) -> list[Stage]:
    return encoder_stages(dims.n_audio_layer) + decoder_stages(dims.n_text_layer)


def stage_named(dims: ModelDimensions, name: str) -> Stage:
    """The stage called ``name`` in a model of ``dims``; ValueError naming it if there is none."""
    for stage in all_stages(dims):
        if stage.name == name:
            return stage
    raise ValueError(
        f"no stage {name!r} in a model of {dims.n_audio_layer}+{dims.n_text_layer} layers"
    )
