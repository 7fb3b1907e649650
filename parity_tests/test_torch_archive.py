"""torch_archive reads what torch.save writes as torch.load does, without torch, and refuses
in one line what it cannot read (the caller then falls back to torch.load)."""

from __future__ import annotations

import mmap
import subprocess
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.inputs.torch_archive import UnreadableArchive, read

SYNTHETIC = Path("/root/.cache/max-whisper/synthetic-tiny-seed0-v2.pt")


def _checkpoint() -> dict:
    """openai-whisper's checkpoint layout, with every kind of tensor the reader handles."""
    torch.manual_seed(0)
    shared = torch.arange(20, dtype=torch.float32)
    state = OrderedDict(
        float32=torch.randn(3, 4),
        float16=torch.randn(5).half(),
        int64=torch.arange(-3, 3),
        bool=torch.tensor([True, False, True]),
        transposed=torch.randn(4, 6).t(),  # non-contiguous, saved as is
        slice=shared[5:12],  # a storage offset
        other_slice=shared[8:16].view(2, 4),  # the same storage, overlapping
        scalar=torch.tensor(2.5),
        parameter=torch.nn.Parameter(torch.randn(2, 3)),
    )
    return {"dims": {"n_mels": 80, "n_vocab": 51865}, "model_state_dict": state}


def _mapped_file(array: np.ndarray) -> bool:
    """Whether ``array`` is a view whose chain of bases ends in a memory map (np.frombuffer's
    base is a memoryview of it)."""
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def test_round_trip_matches_torch(tmp_path):
    saved = _checkpoint()
    torch.save(saved, tmp_path / "checkpoint.pt")
    loaded = read(tmp_path / "checkpoint.pt")
    assert loaded["dims"] == saved["dims"]
    state = loaded["model_state_dict"]
    assert isinstance(state, OrderedDict)
    assert list(state) == list(saved["model_state_dict"])
    for name, tensor in saved["model_state_dict"].items():
        expected = tensor.detach().numpy()
        array = state[name]
        assert array.dtype == expected.dtype and array.shape == expected.shape, name
        assert array.strides == expected.strides, name
        assert np.array_equal(array, expected), name
        assert array.flags.writeable and _mapped_file(array), name
    assert np.shares_memory(state["slice"], state["other_slice"])


def test_big_endian_archive(tmp_path):
    torch.save({"w": torch.randn(3, 2)}, tmp_path / "little.pt")
    little = read(tmp_path / "little.pt")["w"]
    swap = {
        "little/byteorder": lambda _: b"big",
        "little/data/0": lambda data: np.frombuffer(data, "<f4").astype(">f4").tobytes(),
    }
    _rewrite(tmp_path / "little.pt", tmp_path / "big.pt", swap)
    big = read(tmp_path / "big.pt")["w"]
    assert big.dtype == np.dtype(">f4") and np.array_equal(big, little)


@pytest.mark.skipif(not SYNTHETIC.is_file(), reason=f"{SYNTHETIC} not generated")
def test_synthetic_checkpoint_matches_torch_load():
    expected = torch.load(SYNTHETIC, map_location="cpu", weights_only=True, mmap=True)
    loaded = read(SYNTHETIC)
    assert loaded["dims"] == expected["dims"]
    state = loaded["model_state_dict"]
    assert list(state) == list(expected["model_state_dict"])
    for name, tensor in expected["model_state_dict"].items():
        assert state[name].dtype == tensor.numpy().dtype, name
        assert np.array_equal(state[name], tensor.numpy()), name


def test_read_does_not_import_torch(tmp_path):
    torch.save(_checkpoint(), tmp_path / "checkpoint.pt")
    code = (
        "import sys; import harness.inputs.torch_archive as a; "
        f"c = a.read({str(tmp_path / 'checkpoint.pt')!r}); "
        "assert c['model_state_dict']['int64'].tolist() == [-3, -2, -1, 0, 1, 2]; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def _save(obj: object, **kwargs) -> Callable[[Path], None]:
    return lambda path: torch.save(obj, path, **kwargs)


def _zip(members: dict[str, bytes]) -> Callable[[Path], None]:
    """An archive written by hand, members stored."""

    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)

    return write


def _rewrite(
    source: Path, target: Path, change: dict[str, Callable[[bytes], bytes]], **kwargs
) -> None:
    """``source``'s members copied to ``target`` (``kwargs`` to ``writestr``), those named in
    ``change`` changed."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change.get(info.filename, lambda d: d)(old.read(info))
            new.writestr(info.filename, data, **kwargs)


def _resaved(change: dict[str, Callable[[bytes], bytes]], **kwargs) -> Callable[[Path], None]:
    """A torch.save archive (its top folder ``archive``, after the file) rewritten to ``path``."""

    def write(path: Path) -> None:
        torch.save({"w": torch.randn(8)}, path.with_name("archive"))
        _rewrite(path.with_name("archive"), path, change, **kwargs)

    return write


def _cut(path: Path) -> None:
    torch.save({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:300])


# A pickle of ``os.system`` itself (GLOBAL then STOP): refused before anything is imported.
_OS_SYSTEM = b"\x80\x02cos\nsystem\n."

REFUSED = {
    "bfloat16": (_save({"w": torch.ones(2, dtype=torch.bfloat16)}), "unsupported dtype bfloat16"),
    "uint16": (_save({"w": torch.ones(2, dtype=torch.uint16)}), "_rebuild_tensor_v3: a dtype"),
    "neg bit": (_save({"w": torch.ones(3)._neg_view()}), "with its neg bit set"),
    "os.system": (
        _zip({"archive/data.pkl": _OS_SYSTEM, "archive/version": b"3\n"}),
        "unsupported global os.system",
    ),
    "legacy": (
        _save({"w": torch.ones(2)}, _use_new_zipfile_serialization=False),
        "legacy (non-zip) torch.save format",
    ),
    "not a zip": (lambda path: path.write_bytes(b"not a checkpoint\n" * 4), "not a zip file"),
    "cut short": (_cut, "truncated or corrupt zip file"),
    "no data.pkl": (_zip({"archive/version": b"3\n"}), "no archive/data.pkl"),
    "short member": (
        _resaved({"archive/data/0": lambda d: d[:-4]}),
        "data/0 holds 28 bytes, its 8 float32 need 32 (truncated)",
    ),
    "compressed": (_resaved({}, compress_type=zipfile.ZIP_DEFLATED), "is compressed"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refuses_with_reason(case, tmp_path):
    write, reason = REFUSED[case]
    path = tmp_path / "checkpoint.pt"
    write(path)
    with pytest.raises(UnreadableArchive) as refusal:
        read(path)
    message = str(refusal.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
