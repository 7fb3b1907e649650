"""Checking a checkpoint file before openai-whisper loads it, and naming it by its hash.

Kept apart from ``checkpoints`` (which resolves ``--model`` to a file) because the check has one
job of its own: a bad file, whatever its kind, fails with one line naming the file and what is
wrong, rather than a traceback from deep inside ``torch.load`` or ``load_state_dict``. The
expected state dict is spelled out from the dims alone (``expected_shapes``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.inputs import torch_archive
from harness.openai_whisper import ModelDimensions


def validate(path: Path) -> tuple[ModelDimensions, dict[str, Any]]:
    """Fail with one line if ``path`` is not a complete openai-whisper checkpoint; else its dims
    and state dict as stored (memory-mapped: nothing is read until a tensor is used), as NumPy
    arrays where ``torch_archive`` reads the file (every file ``torch.save`` writes in
    float32 or float16), else as torch tensors."""
    if not path.is_file():
        raise HarnessError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch_archive.read(path)
    except torch_archive.UnreadableArchive:
        checkpoint = _torch_load(path)
    except OSError as error:
        raise HarnessError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise HarnessError(
            f"{path}: not an openai-whisper checkpoint (needs dims, model_state_dict)"
        )
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as error:
        raise HarnessError(f"{path}: bad dims ({error})") from None
    expected = expected_shapes(dims)
    found = checkpoint["model_state_dict"]
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k} has shape {tuple(found[k].shape)}, expected {tuple(shape)}"
        for k, shape in expected.items()
        if k in found and tuple(found[k].shape) != shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HarnessError(f"{path}: bad checkpoint: {'; '.join(problems[:3])}{more}")
    return dims, found


def _torch_load(path: Path) -> Any:
    """What ``torch_archive`` does not read (bfloat16, torch's legacy format), or a bad file."""
    import torch  # noqa: PLC0415 - ~1 s that a file torch_archive reads never costs

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HarnessError(f"{path}: not a readable checkpoint ({reason})") from None


def expected_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``Whisper(dims)``, in its order, from the dims alone.

    Spelled out rather than read off modules built on the meta device: building them there
    imported ``torch._dynamo`` and cost 2.2 s of every checkpoint load (meta tensors run
    through PyTorch's decompositions), a third of a short transcript's time. parity_tests/
    test_first_transcript.py checks this against openai-whisper's own module tree.
    """
    shapes = {"encoder.positional_embedding": (dims.n_audio_ctx, dims.n_audio_state)}
    shapes |= _layer("encoder.conv1", dims.n_audio_state, dims.n_mels, 3)
    shapes |= _layer("encoder.conv2", dims.n_audio_state, dims.n_audio_state, 3)
    for i in range(dims.n_audio_layer):
        shapes |= _block(f"encoder.blocks.{i}.", dims.n_audio_state, cross=False)
    shapes |= _layer("encoder.ln_post", dims.n_audio_state)
    shapes["decoder.positional_embedding"] = (dims.n_text_ctx, dims.n_text_state)
    shapes["decoder.token_embedding.weight"] = (dims.n_vocab, dims.n_text_state)
    for i in range(dims.n_text_layer):
        shapes |= _block(f"decoder.blocks.{i}.", dims.n_text_state, cross=True)
    shapes |= _layer("decoder.ln", dims.n_text_state)
    return shapes


def _layer(name: str, n_out: int, *n_in: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """A linear, convolution or layer norm (``n_in`` empty): weight, then bias."""
    shapes = {f"{name}.weight": (n_out, *n_in)}
    return shapes | {f"{name}.bias": (n_out,)} if bias else shapes


def _block(prefix: str, n_state: int, cross: bool) -> dict[str, tuple[int, ...]]:
    """A ``ResidualAttentionBlock``: attention (the key has no bias), its layer norm, the
    cross-attention and its norm in decoder blocks, the MLP and its norm."""
    shapes: dict[str, tuple[int, ...]] = {}
    for attention in ("attn", "cross_attn") if cross else ("attn",):
        for projection in ("query", "key", "value", "out"):
            name = f"{prefix}{attention}.{projection}"
            shapes |= _layer(name, n_state, n_state, bias=projection != "key")
        shapes |= _layer(f"{prefix}{attention}_ln", n_state)
    shapes |= _layer(f"{prefix}mlp.0", 4 * n_state, n_state)
    shapes |= _layer(f"{prefix}mlp.2", n_state, 4 * n_state)
    return shapes | _layer(f"{prefix}mlp_ln", n_state)


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks: what reports and cache names identify it by."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
