"""Load audio the way openai-whisper does, but without needing ffmpeg for WAV and FLAC.

openai-whisper decodes every file with the ffmpeg binary into 16 kHz mono 16-bit PCM and
divides by 32768. For a 16 kHz mono 16-bit WAV, reading it with soundfile gives exactly the
same float32 samples, so both implementations under comparison see identical input. Other
rates and channel layouts are resampled and down-mixed here (close to, not bit-identical
with, ffmpeg). Files whose extension libsndfile does not handle, and MP3, go through
whisper's own ffmpeg loader.
"""

from __future__ import annotations

import re
import shutil
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from whisper.audio import SAMPLE_RATE
from whisper.audio import load_audio as whisper_load_audio

from harness.errors import HarnessError

# libsndfile can read MP3, but whisper's reference decoder is ffmpeg, whose handling of encoder
# delay can differ, so MP3 takes the reference path. RAW has no header to say its sample rate.
_NOT_VIA_SOUNDFILE = {"MP3", "RAW"}
SOUNDFILE_SUFFIXES = frozenset(
    {f".{name.lower()}" for name in sf.available_formats() if name not in _NOT_VIA_SOUNDFILE}
    | {".aif"}
)

# libsndfile silently reads what is there of a truncated WAV and logs "data : N (should be M)".
_DATA_SIZE_MISMATCH = re.compile(r"^data\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
# Pipes (espeak-ng --stdout, ffmpeg to stdout) cannot seek back, so they write a huge
# placeholder size instead of the real one; that is not truncation.
_STREAMING_PLACEHOLDER_BYTES = 0x7FFF0000


def load_audio(path: str | Path) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``SAMPLE_RATE``, raising ``HarnessError`` if unusable."""
    path = Path(path)
    _require_nonempty_file(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        samples = _load_with_soundfile(path)
    else:
        samples = _load_with_ffmpeg(path)
    if samples.size == 0:
        raise HarnessError(f"audio file contains no samples: {path}")
    if not np.all(np.isfinite(samples)):
        raise HarnessError(f"audio file contains NaN or infinite samples: {path}")
    return samples


def audio_duration_s(samples: np.ndarray) -> float:
    """Duration in seconds of samples returned by ``load_audio``."""
    return len(samples) / SAMPLE_RATE


def _require_nonempty_file(path: Path) -> None:
    """Fail early with a precise reason; decoders report all of these as vague open errors."""
    if not path.exists():
        raise HarnessError(f"audio file not found: {path}")
    if not path.is_file():
        raise HarnessError(f"audio path is not a file: {path}")
    if path.stat().st_size == 0:
        raise HarnessError(f"audio file is empty (0 bytes): {path}")


def _load_with_soundfile(path: Path) -> np.ndarray:
    """Read with libsndfile, then down-mix by averaging channels and resample to 16 kHz."""
    try:
        with sf.SoundFile(path) as sound:
            _reject_truncated(sound, path)
            frames = sound.read(dtype="float64", always_2d=True)
            rate = sound.samplerate
    except sf.SoundFileError as error:
        reason = getattr(error, "error_string", str(error))
        raise HarnessError(f"cannot decode audio file {path}: {reason}") from error
    mono = frames.mean(axis=1)
    if rate != SAMPLE_RATE:
        common = gcd(SAMPLE_RATE, rate)
        mono = resample_poly(mono, SAMPLE_RATE // common, rate // common)
    return mono.astype(np.float32)


def _reject_truncated(sound: sf.SoundFile, path: Path) -> None:
    """Refuse a file whose header promises more sample data than the file holds."""
    mismatch = _DATA_SIZE_MISMATCH.search(sound.extra_info)
    if mismatch is None:
        return
    declared, present = (int(size) for size in mismatch.groups())
    if present < declared < _STREAMING_PLACEHOLDER_BYTES:
        raise HarnessError(
            f"audio file is truncated ({present} of {declared} data bytes present): {path}"
        )


def _load_with_ffmpeg(path: Path) -> np.ndarray:
    """Decode with whisper's own ffmpeg loader, the reference for compressed formats."""
    if shutil.which("ffmpeg") is None:
        raise HarnessError(
            f"cannot read {path}: {path.suffix or 'this'} audio needs the ffmpeg binary, "
            "which is not installed (WAV and FLAC work without it)"
        )
    try:
        return whisper_load_audio(str(path))
    except RuntimeError as error:
        # whisper puts ffmpeg's whole stderr in the message; its last line says what failed.
        last_line = str(error).strip().splitlines()[-1]
        raise HarnessError(f"ffmpeg cannot decode audio file {path}: {last_line}") from error
