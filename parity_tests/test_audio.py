"""The audio loader: fixture clips, resampling and down-mixing, and clear errors for bad files.

Fast: no MAX compilation, no espeak-ng (the clips are committed), no ffmpeg unless installed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import whisper.audio

import harness.audio
from harness.audio import SAMPLE_RATE, audio_duration_s, load_audio
from harness.errors import HarnessError

AUDIO_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "audio"

# Expected durations (seconds) of the committed clips, with slack for a regenerated espeak-ng.
CLIP_DURATIONS_S = {
    "short.wav": (2.0, 4.0),
    "sentences.wav": (10.0, 20.0),
    "long.wav": (35.0, 55.0),  # must exceed Whisper's 30 s window
    "silence.wav": (2.0, 4.0),
    "short_stereo_44k.flac": (2.0, 4.0),
}

# The FLAC is short.wav's signal resampled 16k -> 44.1k, stored with the right channel at half
# the left's level, then resampled back by the loader. Both polyphase filters pass the speech
# band almost untouched, so the round trip measures correlation 0.99998 with short.wav; 0.999
# leaves room for a different scipy while still catching a misaligned or distorted result.
MIN_STEREO_CORRELATION = 0.999
# Averaging gives 0.75 of short.wav (measured 0.751); taking one channel would give 1.0 or 0.5,
# summing 1.5.
DOWNMIX_GAIN = 0.75
DOWNMIX_GAIN_TOLERANCE = 0.01


@pytest.mark.parametrize("name", sorted(CLIP_DURATIONS_S))
def test_fixture_clip_loads_as_16k_float32_mono(name: str) -> None:
    samples = load_audio(AUDIO_DIR / name)
    shortest, longest = CLIP_DURATIONS_S[name]
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert shortest < audio_duration_s(samples) < longest
    assert np.max(np.abs(samples)) <= 1.0


def test_silence_is_digital_silence() -> None:
    assert not np.any(load_audio(AUDIO_DIR / "silence.wav"))


def test_transcripts_cover_every_clip() -> None:
    transcripts = json.loads((AUDIO_DIR / "transcripts.json").read_text(encoding="utf-8"))
    clips = {path.name for path in AUDIO_DIR.iterdir() if path.suffix in {".wav", ".flac"}}
    assert set(transcripts) - {"_provenance"} == clips
    assert transcripts["silence.wav"] == ""
    assert "espeak_ng_version" in transcripts["_provenance"]


def test_16k_mono_wav_matches_whisper_int16_scaling() -> None:
    """whisper's ffmpeg path yields int16 / 32768; a 16 kHz mono WAV must give the same bits."""
    path = AUDIO_DIR / "short.wav"
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(load_audio(path), pcm.astype(np.float32) / 32768.0)


def test_stereo_44k_flac_is_resampled_and_averaged_to_match_short_wav() -> None:
    reference = load_audio(AUDIO_DIR / "short.wav")
    converted = load_audio(AUDIO_DIR / "short_stereo_44k.flac")
    assert abs(len(converted) - len(reference)) <= 1
    length = min(len(converted), len(reference))
    reference, converted = reference[:length], converted[:length]
    assert np.corrcoef(reference, converted)[0, 1] > MIN_STEREO_CORRELATION
    gain = float(converted @ reference) / float(reference @ reference)
    assert gain == pytest.approx(DOWNMIX_GAIN, abs=DOWNMIX_GAIN_TOLERANCE)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")
def test_soundfile_path_equals_whisper_ffmpeg_path_for_16k_wav() -> None:
    path = AUDIO_DIR / "short.wav"
    np.testing.assert_array_equal(load_audio(path), whisper.audio.load_audio(str(path)))


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.wav"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.wav"
    path.mkdir()
    return path


def _empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.wav"
    path.touch()
    return path


def _header_without_samples(tmp_path: Path) -> Path:
    path = tmp_path / "no_samples.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE)
    return path


def _text_renamed_wav(tmp_path: Path) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n")
    return path


def _truncated_wav(tmp_path: Path) -> Path:
    return _first_half_of(AUDIO_DIR / "short.wav", tmp_path)


def _truncated_flac(tmp_path: Path) -> Path:
    return _first_half_of(AUDIO_DIR / "short_stereo_44k.flac", tmp_path)


def _non_finite_samples(tmp_path: Path) -> Path:
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, 0.5], dtype=np.float32), SAMPLE_RATE, "FLOAT")
    return path


def _first_half_of(source: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"truncated{source.suffix}"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make_bad_file", "problem"),
    [
        (_missing, "not found"),
        (_directory, "not a file"),
        (_empty_file, "empty (0 bytes)"),
        (_header_without_samples, "no samples"),
        (_text_renamed_wav, "cannot decode"),
        (_truncated_wav, "truncated"),
        (_truncated_flac, "cannot decode"),
        (_non_finite_samples, "NaN"),
    ],
)
def test_bad_audio_raises_one_line_error_naming_file(
    tmp_path: Path, make_bad_file: Callable[[Path], Path], problem: str
) -> None:
    path = make_bad_file(tmp_path)
    with pytest.raises(HarnessError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert problem in message
    assert str(path) in message
    assert "\n" not in message


def test_mp3_without_ffmpeg_says_ffmpeg_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "speech.mp3"
    path.write_bytes(b"ID3" + bytes(64))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(HarnessError, match="needs the ffmpeg binary") as caught:
        load_audio(path)
    assert str(path) in str(caught.value)


def test_ffmpeg_failure_becomes_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "broken.m4a"
    path.write_bytes(bytes(64))

    def failing_ffmpeg(file: str) -> np.ndarray:
        raise RuntimeError(f"Failed to load audio: ffmpeg version 6\n{file}: Invalid data found")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(harness.audio, "whisper_load_audio", failing_ffmpeg)
    with pytest.raises(HarnessError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert message.endswith("Invalid data found")
    assert str(path) in message
    assert "\n" not in message
