"""Reading a ``torch.save`` checkpoint as NumPy arrays, without importing PyTorch.

A process that transcribes with MAX needs a checkpoint's weights, not PyTorch, whose import
alone costs about a second. ``read`` takes the zip format ``torch.save`` writes (members
stored uncompressed under one top folder: a ``data.pkl`` whose tensors point at
``data/<key>`` storages) and gives every tensor as an array memory-mapped from the file
copy-on-write (as ``torch.load(mmap=True)`` maps it): nothing is copied until it is used, a
write never reaches the file, and the arrays are writable, as DLPack, through which MAX binds
weights, exports no read-only array. Like ``torch.load(weights_only=True)`` its
unpickler admits only the globals a state dict needs. Anything else, a dtype NumPy lacks
(bfloat16) included, is refused with ``UnreadableArchive`` and one line saying why, so that
the caller can fall back to ``torch.load``. Formats follow torch/serialization.py (``_save``,
``_load``) and torch/_utils.py (``_rebuild_tensor_v2``) of torch 2.13.
"""

from __future__ import annotations

import io
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np


class UnreadableArchive(Exception):
    """This reader cannot read the file; the one-line message names the file and the reason."""


def read(path: Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, each tensor a NumPy array over a copy-on-write
    memory map of the file (strides and storage sharing as saved). ``OSError`` if the file
    cannot be opened; ``UnreadableArchive`` for what this reader cannot read."""
    try:
        with open(path, "rb") as file:
            members = _members(file)
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        return _Unpickler(mapped, members).load()
    except UnreadableArchive as error:
        raise UnreadableArchive(f"{path}: {error}") from None


# torch's storage classes (torch/storage.py, _dtype_to_storage_type_map) for the dtypes read
# here. The others (BFloat16Storage, ComplexFloatStorage, QInt8Storage, ...) are refused.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

# What torch writes these globals for, to say so when refusing them.
_WHY_REFUSED = {
    "torch._utils._rebuild_tensor_v3": "a dtype with no typed storage: uint16/32/64, float8, ...",
    "torch._utils._rebuild_parameter_with_state": "a Parameter with Python attributes",
    "torch._tensor._rebuild_from_type_v2": "a tensor subclass or a tensor with Python attributes",
}

# ``torch.save(..., _use_new_zipfile_serialization=False)`` begins with this number, pickled.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _members(file: IO[bytes]) -> dict[str, zipfile.ZipInfo]:
    """The zip's members by name under its top folder, as torch's reader names them (the top
    folder is the first member's); refuses a file that is not torch.save's zip format."""
    head = file.read(32)
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
        raise UnreadableArchive("legacy (non-zip) torch.save format")
    try:
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        raise UnreadableArchive(
            "truncated or corrupt zip file" if head.startswith(b"PK") else "not a zip file"
        ) from None
    top = infos[0].filename.partition("/")[0] + "/" if infos else ""
    members = {i.filename.removeprefix(top): i for i in infos if i.filename.startswith(top)}
    if "constants.pkl" in members:
        raise UnreadableArchive("a TorchScript archive (torch.jit.save), not torch.save")
    if "data.pkl" not in members:
        raise UnreadableArchive(f"no {top}data.pkl: not a torch.save archive")
    return members


def _span(mapped: mmap.mmap, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where a stored member's bytes lie in the file: after its local header (30 bytes, then
    its name and extra field, whose lengths there may differ from the central directory's)."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise UnreadableArchive(f"{info.filename} is compressed or encrypted")
    header = mapped[info.header_offset : info.header_offset + 30]
    if len(header) < 30 or not header.startswith(b"PK\x03\x04"):
        raise UnreadableArchive(f"{info.filename}: no local file header where the zip says")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > len(mapped):
        raise UnreadableArchive(f"{info.filename} is truncated: the file ends inside it")
    return start, start + info.file_size


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a global such as ``torch.FloatStorage``, which data.pkl needs for its dtype."""

    dtype: str


class _Unpickler(pickle.Unpickler):
    """``data.pkl``'s reader: globals only from ``_GLOBALS`` and the storage types of
    ``_STORAGE_DTYPES``; storages as flat arrays over ``mapped``, one per key."""

    def __init__(self, mapped: mmap.mmap, members: dict[str, zipfile.ZipInfo]) -> None:
        self._mapped = mapped
        self._members = members
        self._byteorder = self._read_byteorder()
        self._storages: dict[str, np.ndarray] = {}
        start, end = _span(mapped, members["data.pkl"])
        super().__init__(io.BytesIO(mapped[start:end]))

    def _read_byteorder(self) -> str:
        """NumPy's prefix for ``byteorder`` (little when absent, as torch reads it)."""
        info = self._members.get("byteorder")
        order = self._mapped[slice(*_span(self._mapped, info))] if info else b"little"
        if order not in (b"little", b"big"):
            raise UnreadableArchive(f"unknown byte order {order[:20]!r}")
        return "<" if order == b"little" else ">"

    def load(self) -> Any:
        """The unpickled object; any failure, however a crafted pickle fails, as one line."""
        try:
            return super().load()
        except UnreadableArchive:
            raise
        except Exception as error:  # noqa: BLE001 - a crafted pickle can raise anything
            reason = str(error).splitlines()[0] if str(error) else ""
            raise UnreadableArchive(f"bad data.pkl ({type(error).__name__}: {reason})") from None

    def find_class(self, module: str, name: str) -> Any:
        """The stand-in for an allowed global; a refusal naming any other."""
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        if module in ("torch", "torch.cuda") and name.endswith("Storage"):  # cuda: older torch
            if name not in _STORAGE_DTYPES:
                dtype = name.removesuffix("Storage").lower()
                raise UnreadableArchive(f"unsupported dtype {dtype} ({module}.{name})")
            return _StorageType(_STORAGE_DTYPES[name])
        why = _WHY_REFUSED.get(f"{module}.{name}")
        raise UnreadableArchive(f"unsupported global {module}.{name}" + (f": {why}" if why else ""))

    def persistent_load(self, pid: Any) -> np.ndarray:
        """``('storage', storage type, key, location, numel)``, torch's reference to
        ``data/<key>``, as a flat array; the location (the device it was saved from) is moot."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnreadableArchive(f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, _, numel = pid
        if not isinstance(storage_type, _StorageType) or type(numel) is not int or numel < 0:
            raise UnreadableArchive(f"bad storage reference {str(pid)[:80]}")
        dtype = np.dtype(storage_type.dtype).newbyteorder(self._byteorder)
        if key not in self._storages:
            self._storages[key] = self._storage(key, dtype, numel)
        if self._storages[key].dtype != dtype:
            raise UnreadableArchive(f"storage {key} is referred to with two dtypes")
        return self._storages[key]

    def _storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        info = self._members.get(f"data/{key}")
        if info is None:
            raise UnreadableArchive(f"data.pkl refers to data/{key}, which is missing")
        start, end = _span(self._mapped, info)
        if end - start != numel * dtype.itemsize:
            short = " (truncated)" if end - start < numel * dtype.itemsize else ""
            raise UnreadableArchive(
                f"data/{key} holds {end - start} bytes, its {numel} {dtype} need "
                f"{numel * dtype.itemsize}{short}"
            )
        return np.frombuffer(self._mapped, dtype, count=numel, offset=start)


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: Any,
    metadata: dict[str, bool] | None = None,
) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: a view of ``storage``. Gradient flags and hooks
    (always empty: torch does not save hooks) mean nothing to an array."""
    if metadata:  # the conjugate or negative bit: the values stored are not the tensor's
        raise UnreadableArchive(f"a tensor with its {'/'.join(metadata)} bit set")
    return _view(storage, storage_offset, tuple(size), tuple(stride))


def _view(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """``storage`` seen from element ``offset`` with torch's ``size`` and ``stride`` (counted in
    elements), checked to stay inside the storage first, as ``as_strided`` does not check."""
    if not isinstance(storage, np.ndarray):
        raise UnreadableArchive("a tensor whose storage is not a data/<key> member")
    numbers = (offset, *size, *stride)
    if len(size) != len(stride) or any(type(n) is not int or n < 0 for n in numbers):
        raise UnreadableArchive(f"bad tensor offset {offset}, size {size}, stride {stride}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    end = last + 1 if all(size) else 0
    if end > len(storage):
        raise UnreadableArchive(f"a tensor runs past its storage ({end} > {len(storage)})")
    return np.lib.stride_tricks.as_strided(
        storage[offset:], size, [s * storage.itemsize for s in stride]
    )


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any) -> np.ndarray:
    """torch._utils._rebuild_parameter: an ``nn.Parameter`` is its data here."""
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
