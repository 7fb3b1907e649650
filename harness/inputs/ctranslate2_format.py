"""Whisper models in CTranslate2's format (faster-whisper's), read into openai-whisper's checkpoint.

A CTranslate2 model folder holds ``model.bin``: little-endian; a string is a u16 length (counting
a trailing NUL) and its bytes. The file is a u32 format version, the spec name, a u32 spec
revision, a u32 variable count and per variable its name, u8 rank, rank x u32 dims, u8 dtype, u32
byte count and the data; then a u32 alias count and (alias, target) name pairs.

The reader rebuilds openai-whisper's ``{"dims", "model_state_dict"}`` from it: fused q/k/v and
cross k/v projections are split, names mapped one to one, dims read from the tensors' shapes.
Whisper's key projections have no bias, so a non-zero bias in a fused key block means the file
is not the model it claims to be, and is refused. Quantised (int8, int16) models are refused
too: their weights are not openai-whisper's, and dequantising them would compare MAX against a
model nobody published.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessError

FORMAT_VERSION = 6
SPEC = "WhisperSpec"
# dtype code: (numpy dtype, name); bfloat16 is read as its raw 16 bits.
_DTYPES = {
    0: (np.float32, "float32"),
    1: (np.int8, "int8"),
    2: (np.int16, "int16"),
    3: (np.int32, "int32"),
    4: (np.float16, "float16"),
    5: (np.uint16, "bfloat16"),
}
_FLOATS = {"float32", "float16", "bfloat16"}
# Scalars a Whisper spec carries (which ones depends on the converter's release), and the value
# openai-whisper's architecture implies (None: any). Only the head counts must be there.
_HEADS = ("encoder/num_heads", "decoder/num_heads")
_SCALARS = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/activation": 3,  # CTranslate2's ActivationType.GELU (erf), what whisper uses
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": None,  # both only matter with alibi
    "decoder/scale_alibi": None,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_heads": None,  # word-timestamp settings, unused by the parity harness
    "decoder/alignment_layer": None,
}
_TIED = ("decoder/projection/weight", "decoder/embeddings/weight")
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")
# Per-layer CTranslate2 sub-module -> openai-whisper sub-module (linears and layer norms).
_LAYER_MODULES = {
    "self_attention/linear_1": "attn.out",
    "self_attention/layer_norm": "attn_ln",
    "attention/linear_0": "cross_attn.query",
    "attention/linear_2": "cross_attn.out",
    "attention/layer_norm": "cross_attn_ln",
    "ffn/linear_0": "mlp.0",
    "ffn/linear_1": "mlp.2",
    "ffn/layer_norm": "mlp_ln",
}
# Fused projections: CTranslate2 name -> openai-whisper linears stacked along the output rows.
_FUSED = {
    "self_attention/linear_0": ("attn.query", "attn.key", "attn.value"),
    "attention/linear_1": ("cross_attn.key", "cross_attn.value"),
}
_TOP_MODULES = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/layer_norm": "encoder.ln_post",
    "decoder/layer_norm": "decoder.ln",
    "decoder/embeddings": "decoder.token_embedding",
}
_POSITIONS = {
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
}
_PARAMETERS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


@dataclass(frozen=True)
class ModelBin:
    """The variables of one ``model.bin``, as stored, with the dtype its weights were kept in."""

    path: Path
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]
    dtype: str


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file()


def read(path: Path, data: bytes | None = None) -> ModelBin:
    """Parse ``path`` (a ``model.bin``; ``data``, its bytes if already read) whole, or fail
    with one line naming it."""
    try:
        data = path.read_bytes() if data is None else data
    except OSError as error:
        raise HarnessError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return _parse(path, memoryview(data))
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        raise HarnessError(f"{path}: truncated or not a CTranslate2 model ({error})") from None


def _parse(path: Path, data: memoryview) -> ModelBin:
    reader = _Reader(data)
    version = reader.u32()
    if version != FORMAT_VERSION:
        raise HarnessError(
            f"{path}: CTranslate2 format version {version} not supported (need {FORMAT_VERSION})"
        )
    spec = reader.string()
    if spec != SPEC:
        raise HarnessError(f"{path}: a CTranslate2 {spec or 'unnamed'} model, not {SPEC}")
    reader.u32()  # spec revision
    variables, dtypes = {}, set()
    for _ in range(reader.u32()):
        name, array, dtype = reader.variable()
        variables[name] = array
        if array.ndim > 0:
            dtypes.add(dtype)
    aliases = {reader.string(): reader.string() for _ in range(reader.u32())}
    if reader.offset != len(data):
        raise HarnessError(f"{path}: {len(data) - reader.offset} unexpected bytes after the model")
    quantised = dtypes - _FLOATS
    if quantised:
        raise HarnessError(
            f"{path}: {'/'.join(sorted(quantised))}-quantised CTranslate2 model; only float32, "
            "float16 and bfloat16 models hold openai-whisper's weights (convert with "
            "--quantization float16)"
        )
    if len(dtypes) != 1:
        raise HarnessError(f"{path}: weights stored in mixed dtypes {sorted(dtypes)}")
    return ModelBin(path, variables, aliases, dtypes.pop())


class _Reader:
    """Sequential little-endian reads over the file's bytes."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.offset = data, 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def u32(self) -> int:
        return self.unpack("I")[0]

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = self.take(length)
        return bytes(raw).rstrip(b"\0").decode("utf-8")

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise ValueError(f"needs {size} bytes at offset {self.offset}, file ends first")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def variable(self) -> tuple[str, np.ndarray, str]:
        name = self.string()
        (rank,) = self.unpack("B")
        shape = self.unpack("I" * rank)
        code, size = self.unpack("BI")
        if code not in _DTYPES:
            raise ValueError(f"variable {name!r} has unknown dtype code {code}")
        dtype, dtype_name = _DTYPES[code]
        if size != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise ValueError(f"variable {name!r}: {size} bytes do not fit shape {shape}")
        array = np.frombuffer(self.take(size), dtype=dtype).reshape(shape)
        return name, array, dtype_name


def to_whisper_checkpoint(model: ModelBin) -> dict:
    """openai-whisper's ``{"dims", "model_state_dict"}`` for ``model``, weights in their stored
    dtype (float16 stays float16, as in OpenAI's own files)."""
    variables = dict(model.variables)
    for alias, target in model.aliases.items():
        if (alias, target) != _TIED:
            raise HarnessError(f"{model.path}: unknown alias {alias!r} -> {target!r}")
    scalars = {
        name: _scalar(model, name, variables.pop(name)) for name in _SCALARS if name in variables
    }
    missing = [name for name in _HEADS if name not in scalars]
    if missing:
        raise HarnessError(f"{model.path}: missing {', '.join(missing)}")
    state = {}
    for name, array in variables.items():
        state.update(_mapped(model.path, name, _tensor(array, model.dtype)))
    dims = _dims(model.path, state, scalars)
    return {"dims": dims, "model_state_dict": state}


def _scalar(model: ModelBin, name: str, array: np.ndarray) -> int:
    value = int(array)
    expected = _SCALARS[name]
    if expected is not None and value != expected:
        raise HarnessError(
            f"{model.path}: {name} is {value}, openai-whisper's Whisper needs {expected}"
        )
    return value


def _tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "bfloat16":
        return torch.from_numpy(array.copy().view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _mapped(path: Path, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The openai-whisper tensors that CTranslate2's variable ``name`` holds."""
    if name in _POSITIONS:
        return {_POSITIONS[name]: tensor}
    module, _, parameter = name.rpartition("/")
    if parameter not in _PARAMETERS:
        raise HarnessError(f"{path}: unknown variable {name!r}")
    parameter = _PARAMETERS[parameter]
    if module in _TOP_MODULES:
        return {f"{_TOP_MODULES[module]}.{parameter}": tensor}
    layer = _LAYER.match(module)
    if layer is None:
        raise HarnessError(f"{path}: unknown variable {name!r}")
    half, index, sub = layer.groups()
    prefix = f"{half}.blocks.{index}."
    if sub in _LAYER_MODULES and (half == "decoder" or not sub.startswith("attention/")):
        return {f"{prefix}{_LAYER_MODULES[sub]}.{parameter}": tensor}
    if sub in _FUSED:
        return _split(path, name, prefix, _FUSED[sub], parameter, tensor)
    raise HarnessError(f"{path}: unknown variable {name!r}")


def _split(
    path: Path,
    name: str,
    prefix: str,
    targets: tuple[str, ...],
    parameter: str,
    tensor: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """A fused projection's rows, one block per target; key blocks carry no bias in whisper."""
    if tensor.shape[0] % len(targets):
        raise HarnessError(f"{path}: {name} has {tensor.shape[0]} rows, not {len(targets)} blocks")
    parts = tensor.chunk(len(targets))
    split = {}
    for target, part in zip(targets, parts, strict=True):
        if parameter == "bias" and target.endswith(".key"):
            if torch.any(part != 0):
                raise HarnessError(
                    f"{path}: {name} has a non-zero key bias; Whisper's key projection has none"
                )
            continue
        split[f"{prefix}{target}.{parameter}"] = part.clone()
    return split


def _dims(path: Path, state: dict[str, torch.Tensor], scalars: dict[str, int]) -> dict[str, int]:
    """openai-whisper's ``ModelDimensions`` fields, read from the tensors' shapes."""
    try:
        conv1 = state["encoder.conv1.weight"]  # (n_audio_state, n_mels, 3)
        embedding = state["decoder.token_embedding.weight"]  # (n_vocab, n_text_state)
        audio_ctx = state["encoder.positional_embedding"].shape[0]
        text_ctx = state["decoder.positional_embedding"].shape[0]
    except KeyError as missing:
        raise HarnessError(f"{path}: missing the weights of {missing}") from None
    return {
        "n_mels": conv1.shape[1],
        "n_audio_ctx": audio_ctx,
        "n_audio_state": conv1.shape[0],
        "n_audio_head": scalars["encoder/num_heads"],
        "n_audio_layer": _layer_count(state, "encoder"),
        "n_vocab": embedding.shape[0],
        "n_text_ctx": text_ctx,
        "n_text_state": embedding.shape[1],
        "n_text_head": scalars["decoder/num_heads"],
        "n_text_layer": _layer_count(state, "decoder"),
    }


def _layer_count(state: dict[str, torch.Tensor], half: str) -> int:
    return len({name.split(".")[2] for name in state if name.startswith(f"{half}.blocks.")})


def from_whisper_checkpoint(state: dict[str, torch.Tensor], dims: dict[str, int]) -> dict:
    """The reverse of ``to_whisper_checkpoint``: CTranslate2's variables for openai-whisper's
    ``state`` (a synthetic checkpoint written out for CTranslate2 itself to run, or a test
    file), with the scalars a Whisper spec carries."""
    variables: dict[str, np.ndarray] = {}
    for name, target in _POSITIONS.items():
        variables[name] = _array(state[target])
    for module, target in _TOP_MODULES.items():
        _put(variables, module, target, state)
    for half, layers in (("encoder", dims["n_audio_layer"]), ("decoder", dims["n_text_layer"])):
        for index in range(layers):
            _put_layer(variables, half, index, state)
    variables["encoder/num_heads"] = np.array(dims["n_audio_head"], dtype=np.int16)
    variables["decoder/num_heads"] = np.array(dims["n_text_head"], dtype=np.int16)
    for name, value in _SCALARS.items():
        if value is not None:
            variables[name] = np.array(value, dtype=np.int8)
    return {"variables": variables, "aliases": dict([_TIED])}


def _put_layer(variables: dict, half: str, index: int, state: dict[str, torch.Tensor]) -> None:
    prefix, layer = f"{half}.blocks.{index}.", f"{half}/layer_{index}/"
    for sub, target in _LAYER_MODULES.items():
        if half == "decoder" or not sub.startswith("attention/"):
            _put(variables, layer + sub, prefix + target, state)
    for sub, targets in _FUSED.items():
        if half == "encoder" and sub.startswith("attention/"):
            continue
        weights = [state[f"{prefix}{t}.weight"] for t in targets]
        biases = [
            state.get(f"{prefix}{t}.bias", torch.zeros(len(w)))
            for t, w in zip(targets, weights, strict=True)
        ]
        variables[f"{layer}{sub}/weight"] = _array(torch.cat(weights))
        variables[f"{layer}{sub}/bias"] = _array(
            torch.cat([b.to(weights[0].dtype) for b in biases])
        )


def _put(variables: dict, module: str, target: str, state: dict[str, torch.Tensor]) -> None:
    """A linear, conv, embedding (weight, bias) or layer norm (gamma, beta) under CT2's names."""
    norm = module.endswith("layer_norm")
    for parameter, stored in (
        ("weight", "gamma" if norm else "weight"),
        ("bias", "beta" if norm else "bias"),
    ):
        if f"{target}.{parameter}" in state:
            variables[f"{module}/{stored}"] = _array(state[f"{target}.{parameter}"])


def _array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.detach().contiguous().numpy()


def write(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """``variables`` and ``aliases`` as a version-6 ``model.bin`` (floats: one dtype for all;
    a uint16 array is taken for bfloat16's raw bits)."""
    codes = {np.dtype(dtype): code for code, (dtype, _) in _DTYPES.items()}
    chunks = [
        struct.pack("<I", FORMAT_VERSION),
        _string(SPEC),
        struct.pack("<II", 3, len(variables)),
    ]
    for name, array in variables.items():
        array = np.ascontiguousarray(array) if array.ndim else array  # keeps 0-d scalars 0-d
        chunks += [_string(name), struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)]
        chunks += [struct.pack("<BI", codes[array.dtype], array.nbytes), array.tobytes()]
    chunks.append(struct.pack("<I", len(aliases)))
    chunks += [_string(a) + _string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(chunks))


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw
