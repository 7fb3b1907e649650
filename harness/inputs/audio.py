"""Load audio the way openai-whisper does, without needing the ffmpeg binary.

openai-whisper decodes every file with the ffmpeg command into 16 kHz mono 16-bit PCM and
divides by 32768. WAV, FLAC and the other lossless formats libsndfile reads go through
soundfile: for a 16 kHz mono 16-bit WAV that gives exactly the same float32 samples, so both
implementations under comparison see identical input; other rates and channel layouts are
resampled and down-mixed here (close to, not bit-identical with, ffmpeg). Everything else
(MP3, AAC/M4A, Ogg Vorbis, Opus, the audio track of a video) is decoded with PyAV, which
bundles FFmpeg's own libraries, and converted by libswresample the way the ffmpeg command
converts it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from harness.errors import HarnessError
from harness.lazy_import import lazy
from harness.openai_whisper import SAMPLE_RATE

av = lazy("av")  # ~0.12 s to import, for the formats soundfile does not read

# libsndfile can read MP3 and Ogg too, but whisper's reference decoder is FFmpeg, and libsndfile
# handles encoder delay and stream ends its own way: it plays Ogg Opus without skipping the
# encoder's pre-skip (6.5 ms late), and trusts Ogg page positions, so it read 0.18 s of a 2.8 s
# Vorbis file from FFmpeg's own encoder. Those formats take PyAV, which is FFmpeg. RAW has no
# header to say its sample rate, so it is refused (below).
_NOT_VIA_SOUNDFILE = {"MP3", "OGG", "RAW"}
SOUNDFILE_SUFFIXES = frozenset(
    {f".{name.lower()}" for name in sf.available_formats() if name not in _NOT_VIA_SOUNDFILE}
    | {".aif"}
)
# Nothing in headerless PCM says its rate, sample width or channels; FFmpeg's probe would guess.
_HEADERLESS_SUFFIXES = frozenset({".raw", ".pcm"})

# libsndfile silently reads what is there of a truncated WAV and logs "data : N (should be M)".
_DATA_SIZE_MISMATCH = re.compile(r"^data\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
# Pipes (espeak-ng --stdout, ffmpeg to stdout) cannot seek back, so they write a huge
# placeholder size instead of the real one; that is not truncation.
_STREAMING_PLACEHOLDER_BYTES = 0x7FFF0000

# The ffmpeg command skips a packet its decoder rejects, and fails (so whisper's loader raises)
# only when rejections exceed this fraction of decoded frames plus rejections: -max_error_rate.
_MAX_DECODE_ERROR_RATE = 2 / 3


def load_audio(path: str | Path) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``SAMPLE_RATE``, raising ``HarnessError`` if unusable."""
    path = Path(path)
    _require_nonempty_file(path)
    suffix = path.suffix.lower()
    if suffix in _HEADERLESS_SUFFIXES:
        raise HarnessError(
            f"cannot read headerless audio {path}: nothing in it says its sample rate or "
            "format; convert it to WAV"
        )
    if suffix in SOUNDFILE_SUFFIXES:
        samples = _load_with_soundfile(path)
    else:
        samples = _load_with_pyav(path)
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
        from scipy.signal import resample_poly  # ~1 s of imports: only files not at 16 kHz

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


def _load_with_pyav(path: Path) -> np.ndarray:
    """Decode the first audio stream with FFmpeg's libraries, as whisper's ffmpeg command does."""
    try:
        # Tags are never used here, and one that is not valid UTF-8 must not stop the decode.
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = _first_audio_stream(container, path)
            pcm = _to_whisper_pcm(_decoded_frames(container, stream, path))
    except av.error.FFmpegError as error:
        raise HarnessError(f"cannot decode audio file {path}: {error.strerror}") from error
    return pcm.astype(np.float32) / 32768.0


def _first_audio_stream(container: av.container.InputContainer, path: Path) -> av.AudioStream:
    """The stream to transcribe; a video without sound has none, which deserves its own message."""
    if not container.streams.audio:
        raise HarnessError(f"file has no audio stream: {path}")
    return container.streams.audio[0]


def _decoded_frames(
    container: av.container.InputContainer, stream: av.AudioStream, path: Path
) -> Iterator[av.AudioFrame]:
    """Yield the stream's frames, skipping packets the decoder rejects, as the ffmpeg command does.

    A damaged packet then costs its few milliseconds, not the recording, and the samples stay
    those whisper's loader would get; past ffmpeg's error rate the file is refused, as there.
    """
    decoded = rejected = 0
    reason = ""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as error:
            rejected, reason = rejected + 1, error.strerror
            continue
        decoded += len(frames)
        yield from frames
    if rejected > _MAX_DECODE_ERROR_RATE * (decoded + rejected):
        raise HarnessError(
            f"cannot decode audio file {path}: the decoder rejected {rejected} of "
            f"{decoded + rejected} packets ({reason})"
        )


def _to_whisper_pcm(frames: Iterable[av.AudioFrame]) -> np.ndarray:
    """Convert to 16 kHz mono int16 with libswresample, as ``ffmpeg -ac 1 -ar 16000`` does.

    A stream can change rate or layout midway (concatenated MP3s, say). ffmpeg then builds a new
    filter graph without draining the old one, dropping the few samples it still held, so a new
    resampler starts here the same way; only the last one is flushed, as ffmpeg flushes at EOF.
    """
    chunks: list[np.ndarray] = []
    resampler = None
    for _, run in itertools.groupby(frames, key=_sample_format):
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks += [out.to_ndarray() for frame in run for out in resampler.resample(frame)]
    if resampler is not None:
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    return np.concatenate(chunks, axis=None) if chunks else np.zeros(0, dtype=np.int16)


def _sample_format(frame: av.AudioFrame) -> tuple[str, str, int]:
    """What a resampler is built for; a frame that differs needs a new one."""
    return frame.format.name, frame.layout.name, frame.sample_rate
