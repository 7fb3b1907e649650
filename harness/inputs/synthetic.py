"""Checkpoint files the harness writes itself, in openai-whisper's format, to its cache.

Kept apart from ``checkpoints`` (which resolves ``--model`` to a loaded model) because making
weights is a job of its own: ``synthetic:<name>`` is drawn from a seed at openai-whisper's
published dims (``official_dims``), and ``fixture:<name>`` is expanded from the compact file
committed under ``fixtures/models/`` (``compact_checkpoint`` writes those, once, from a trained
model). Each is written once to ``~/.cache/max-whisper/`` by ``write_checkpoint``, which
``checkpoints`` also uses for CTranslate2 conversions, so every written file is whole or absent.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import whisper
from whisper.model import Whisper

from harness.errors import HarnessError
from harness.inputs.validation import sha256
from harness.openai_whisper import ModelDimensions
from harness.paths import cache_dir

EMBEDDING = "decoder.token_embedding.weight"
EMBEDDING_ROWS = "token_embedding_rows"  # a compact file's stand-in for EMBEDDING
SYNTHETIC_SEED = 0
SYNTHETIC_FORMAT = 2  # bump when the synthetic initialisation changes, to regenerate caches

# openai-whisper's published dims, for building synthetic checkpoints of each size.
_TEXT_CTX, _AUDIO_CTX = 448, 1500
_SIZES = {  # name: (n_mels, n_vocab, state, heads, audio layers, text layers)
    "tiny": (80, 51865, 384, 6, 4, 4),
    "base": (80, 51865, 512, 8, 6, 6),
    "small": (80, 51865, 768, 12, 12, 12),
    "medium": (80, 51865, 1024, 16, 24, 24),
    "large-v1": (80, 51865, 1280, 20, 32, 32),
    "large-v2": (80, 51865, 1280, 20, 32, 32),
    "large-v3": (128, 51866, 1280, 20, 32, 32),
    "large": (128, 51866, 1280, 20, 32, 32),
    "large-v3-turbo": (128, 51866, 1280, 20, 32, 4),
    "turbo": (128, 51866, 1280, 20, 32, 4),
}


def official_dims(name: str) -> ModelDimensions:
    """The dims of openai-whisper's checkpoint ``name`` (``.en`` models have one token fewer)."""
    size = name.removesuffix(".en")
    if size not in _SIZES or name not in whisper.available_models():
        known = ", ".join(whisper.available_models())
        raise HarnessError(f"unknown model {name!r}; known: {known}")
    n_mels, n_vocab, state, heads, audio_layers, text_layers = _SIZES[size]
    return ModelDimensions(
        n_mels=n_mels,
        n_vocab=n_vocab - 1 if name.endswith(".en") else n_vocab,
        n_audio_ctx=_AUDIO_CTX,
        n_audio_state=state,
        n_audio_head=heads,
        n_audio_layer=audio_layers,
        n_text_ctx=_TEXT_CTX,
        n_text_state=state,
        n_text_head=heads,
        n_text_layer=text_layers,
    )


def synthetic_checkpoint(name: str, seed: int = SYNTHETIC_SEED) -> Path:
    """The cache file of ``synthetic:<name>``, written once in openai-whisper's format."""
    dims = official_dims(name)
    path = cache_dir() / "max-whisper" / f"synthetic-{name}-seed{seed}-v{SYNTHETIC_FORMAT}.pt"
    if not path.is_file():
        write_checkpoint(path, asdict(dims), synthetic_state_dict(dims, seed))
    return path


def synthetic_state_dict(dims: ModelDimensions, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for every tensor of a ``Whisper(dims)``.

    PyTorch's default init covers linears and convs, but leaves the decoder's positional
    embedding uninitialised (``torch.empty``) and every layer norm at weight 1, bias 0; those are
    drawn here too, so that a swapped or missing norm changes the numbers. The token embedding,
    N(0, 1) by default, is drawn at std 0.02 (GPT-2's init): it doubles as the output
    projection, and at N(0, 1) the logits' top two differ by hundreds, a decoder no numeric
    error could flip; at 0.02 the gaps are a few units, as in trained models.
    """
    torch.manual_seed(seed)
    model = Whisper(dims)
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, tensor in state.items():
        if name in ("decoder.positional_embedding", "decoder.token_embedding.weight"):
            tensor.normal_(0.0, 0.02, generator=generator)
        elif "ln" in name.split(".")[-2]:  # attn_ln, mlp_ln, ln_post, ln
            base = 1.0 if name.endswith("weight") else 0.0
            tensor.normal_(base, 0.1, generator=generator)
    return state


def compact_checkpoint(
    dims: ModelDimensions, state: dict[str, torch.Tensor], rows: list[int]
) -> dict:
    """openai-whisper's checkpoint with the token embedding cut to ``rows``, the other rows
    stored once, as their mean.

    A model trained on a few hundred words (``fixture:speech``) spends 86% of its weights on
    the embedding rows of 51,865 tokens; the rows of tokens it never saw all ended within 7%
    (relative L2) of their mean. Cut this way the committed file is 2.6 MB instead of 15.8.
    """
    embedding = state[EMBEDDING]
    keep = torch.zeros(len(embedding), dtype=torch.bool)
    keep[rows] = True
    return {
        "dims": asdict(dims),
        "model_state_dict": {k: v for k, v in state.items() if k != EMBEDDING},
        EMBEDDING_ROWS: {
            "rows": keep.nonzero().squeeze(1),
            "values": embedding[keep],
            "others": embedding[~keep].mean(dim=0).to(embedding.dtype),
        },
    }


def expanded_checkpoint(source: Path) -> Path:
    """The openai-whisper checkpoint a ``compact_checkpoint`` file stands for, written once to
    the cache under the compact file's hash."""
    if not source.is_file():
        raise HarnessError(f"{source}: fixture checkpoint not found")
    path = cache_dir() / "max-whisper" / f"{source.stem}-{sha256(source)[:12]}.pt"
    if not path.is_file():
        try:
            compact = torch.load(source, map_location="cpu", weights_only=True)
            rows = compact[EMBEDDING_ROWS]
            embedding = rows["others"].expand(compact["dims"]["n_vocab"], -1).clone()
            embedding[rows["rows"]] = rows["values"]
        except Exception as error:  # noqa: BLE001 - torch and a bad layout raise many types
            raise HarnessError(f"{source}: not a compact fixture checkpoint ({error})") from None
        state = {**compact["model_state_dict"], EMBEDDING: embedding}
        write_checkpoint(path, compact["dims"], state)
    return path


def write_checkpoint(path: Path, dims: dict, state: dict[str, torch.Tensor]) -> None:
    """openai-whisper's checkpoint format, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save({"dims": dims, "model_state_dict": state}, tmp)
    os.replace(tmp.name, path)
