"""The audio loader: fixture clips, compressed formats, resampling and down-mixing, clear errors.

Fast: no MAX compilation, no espeak-ng (the clips are committed), no ffmpeg binary: the MP3,
AAC, Vorbis, Opus and video files are encoded here from short.wav with PyAV.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from math import gcd
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate, correlation_lags, resample_poly

import harness.inputs.audio
from harness.errors import HarnessError
from harness.inputs.audio import SAMPLE_RATE, audio_duration_s, load_audio
from harness.paths import FIXTURES

AUDIO_DIR = FIXTURES / "audio"

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

# Each compressed file holds short.wav as stereo at 44.1 or 48 kHz, right channel at half level,
# so decoding must resample and down-mix. Decoded length minus short.wav's (16 kHz samples):
# MP3, Opus and WebM 0 (their headers record the encoder delay and padding, which FFmpeg trims),
# Ogg Vorbis +333 (the last block's padding), AAC +704 in M4A at 44.1 kHz and +404 in MP4 at
# 48 kHz (1024 samples of priming, which PyAV's muxer leaves out of the edit list, plus the last
# frame's padding). All start at lag 0 but AAC, 371.5 and 341.4 samples late: its priming.
# Both are bounded by two of the longest codec frames here (Vorbis, 2048 samples at 44.1 kHz).
CODEC_SLACK_S = 2 * 2048 / 44100
# After aligning that delay, correlation with short.wav measured: MP3 0.99904, M4A 0.99864,
# Vorbis 0.99981, Opus 0.99975, MP4 0.99828, WebM 0.99975. Failures score far lower: 5 ms of
# speech dropped midway 0.63, 1% fast -0.07, one sample misaligned 0.91; noise at -20 dB SNR
# scores 0.995, so above that the codec noise is at least 20 dB under the speech.
MIN_CODEC_CORRELATION = 0.995
# Half a 16 kHz sample of misalignment alone costs this speech 0.024 of correlation (AAC's
# priming is a fractional 371.5 samples), so align on an 8x finer grid.
ALIGN_UPSAMPLING = 8
# Measured gains 0.713 (LAME encodes 5% quieter, mono too) to 0.751; the window is halfway to
# what taking one channel would give (0.5 or 1.0), so it tells averaging from the wrong mixes.
CODEC_DOWNMIX_TOLERANCE = 0.125
# FFmpeg's own Vorbis encoder (the wheel has no libvorbis) is flagged experimental; the flag
# changes nothing for the other encoders.
ENCODER_OPTIONS = {"strict": "experimental"}
VIDEO_SIZE = 64
VIDEO_FPS = 10


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


def test_pyav_path_gives_the_same_bits_as_soundfile_for_16k_wav() -> None:
    """The promise whisper's ffmpeg path makes (int16 / 32768) holds for the PyAV path too."""
    path = AUDIO_DIR / "short.wav"
    np.testing.assert_array_equal(harness.inputs.audio._load_with_pyav(path), load_audio(path))


class Alignment(NamedTuple):
    lag_s: float
    correlation: float
    gain: float


def _align(reference: np.ndarray, decoded: np.ndarray) -> Alignment:
    """How late ``decoded`` starts, and how it correlates with ``reference`` once shifted back."""
    fine_reference, fine_decoded = (
        resample_poly(samples.astype(np.float64), ALIGN_UPSAMPLING, 1)
        for samples in (reference, decoded)
    )
    scores = correlate(fine_decoded, fine_reference, mode="full", method="fft")
    lags = correlation_lags(len(fine_decoded), len(fine_reference), mode="full")
    lag = int(lags[np.argmax(scores)])
    fine_decoded, fine_reference = fine_decoded[max(lag, 0) :], fine_reference[max(-lag, 0) :]
    length = min(len(fine_decoded), len(fine_reference))
    fine_decoded, fine_reference = fine_decoded[:length], fine_reference[:length]
    return Alignment(
        lag_s=lag / ALIGN_UPSAMPLING / SAMPLE_RATE,
        correlation=float(np.corrcoef(fine_reference, fine_decoded)[0, 1]),
        gain=float(fine_decoded @ fine_reference) / float(fine_reference @ fine_reference),
    )


def _encode(path: Path, audio_codec: str, rate: int, video_codec: str | None = None) -> Path:
    """Write short.wav's speech with PyAV as stereo at ``rate``, plus a video track if asked."""
    speech = _stereo_speech(rate)
    with av.open(str(path), "w") as container:
        video = None if video_codec is None else _add_video_stream(container, video_codec)
        audio = container.add_stream(
            audio_codec, rate=rate, layout="stereo", options=ENCODER_OPTIONS
        )
        container.mux(audio.encode(speech))
        container.mux(audio.encode(None))
        if video is not None:
            _write_video_frames(container, video, speech.samples / rate)
    return path


def _stereo_speech(rate: int) -> av.AudioFrame:
    """short.wav at ``rate`` (resampled by scipy, not the FFmpeg code under test), right at half."""
    mono = load_audio(AUDIO_DIR / "short.wav").astype(np.float64)
    common = gcd(rate, SAMPLE_RATE)
    mono = resample_poly(mono, rate // common, SAMPLE_RATE // common)
    planes = np.stack([mono, 0.5 * mono]).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
    frame.sample_rate = rate
    return frame


def _add_video_stream(container: av.container.OutputContainer, codec: str) -> av.VideoStream:
    stream = container.add_stream(codec, rate=VIDEO_FPS)
    stream.width = stream.height = VIDEO_SIZE
    stream.pix_fmt = "yuv420p"
    return stream


def _write_video_frames(
    container: av.container.OutputContainer, stream: av.VideoStream, seconds: float
) -> None:
    """A grey ramp: any picture will do, the loader must only skip past it."""
    for index in range(round(seconds * VIDEO_FPS)):
        image = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), index * 8 % 256, dtype=np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode(None))


@pytest.mark.parametrize(
    ("name", "audio_codec", "rate", "video_codec"),
    [
        pytest.param("speech.mp3", "libmp3lame", 44100, None, id="mp3"),
        pytest.param("speech.m4a", "aac", 44100, None, id="m4a-aac"),
        pytest.param("speech.ogg", "vorbis", 44100, None, id="ogg-vorbis"),
        pytest.param("speech.opus", "libopus", 48000, None, id="opus"),
        pytest.param("speech.mp4", "aac", 48000, "libx264", id="mp4-h264-aac"),
        pytest.param("speech.webm", "libopus", 48000, "libvpx", id="webm-vp8-opus"),
    ],
)
def test_compressed_file_decodes_to_short_wav(
    tmp_path: Path, name: str, audio_codec: str, rate: int, video_codec: str | None
) -> None:
    reference = load_audio(AUDIO_DIR / "short.wav")
    samples = load_audio(_encode(tmp_path / name, audio_codec, rate, video_codec))
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    extra_s = audio_duration_s(samples) - audio_duration_s(reference)
    assert 0 <= extra_s <= CODEC_SLACK_S
    alignment = _align(reference, samples)
    assert 0 <= alignment.lag_s <= CODEC_SLACK_S
    assert alignment.correlation > MIN_CODEC_CORRELATION
    assert alignment.gain == pytest.approx(DOWNMIX_GAIN, abs=CODEC_DOWNMIX_TOLERANCE)


def test_damaged_mp3_packets_are_skipped_as_ffmpeg_skips_them(tmp_path: Path) -> None:
    """A burst of garbage mid-file costs about its own duration, not the file."""
    path = _encode(tmp_path / "speech.mp3", "libmp3lame", 44100)
    intact = load_audio(path)
    data = bytearray(path.read_bytes())
    damaged_bytes = 1000
    middle = len(data) // 2
    data[middle : middle + damaged_bytes] = np.random.default_rng(0).bytes(damaged_bytes)
    path.write_bytes(bytes(data))
    lost_s = audio_duration_s(intact) - audio_duration_s(load_audio(path))
    # Measured 68 ms: the 61 ms those bytes held, rounded out to whole 26 ms MP3 frames.
    damaged_s = damaged_bytes / len(data) * audio_duration_s(intact)
    mp3_frame_s = 1152 / 44100
    assert damaged_s - mp3_frame_s < lost_s < damaged_s + 2 * mp3_frame_s


def test_mp3_changing_rate_midway_decodes_both_parts(tmp_path: Path) -> None:
    """Two MP3s end to end (44.1 then 22.05 kHz): one stream whose sample rate changes."""
    first = _encode(tmp_path / "first.mp3", "libmp3lame", 44100)
    second = _encode(tmp_path / "second.mp3", "libmp3lame", 22050)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    head, tail, samples = load_audio(first), load_audio(second), load_audio(joined)
    np.testing.assert_array_equal(samples[: len(head)], head)
    # The second file's own header frame and encoder delay now play as 46 ms of lead-in.
    alignment = _align(tail, samples[len(head) :])
    assert 0 <= alignment.lag_s <= CODEC_SLACK_S
    assert alignment.correlation > MIN_CODEC_CORRELATION


def test_tag_that_is_not_utf8_does_not_stop_decoding(tmp_path: Path) -> None:
    """Some taggers write Latin-1 into ID3v2.4 frames that declare UTF-8; PyAV would raise."""
    path = _encode(tmp_path / "speech.mp3", "libmp3lame", 44100)
    untagged = load_audio(path)
    title = b"\x03" + "Café".encode("latin-1")  # 3: the frame says its text is UTF-8
    frame = b"TIT2" + len(title).to_bytes(4, "big") + b"\x00\x00" + title
    # ID3v2.4 sizes are 7 bits a byte; under 128 that is the plain big-endian value.
    tag = b"ID3\x04\x00\x00" + len(frame).to_bytes(4, "big") + frame
    path.write_bytes(tag + path.read_bytes())
    np.testing.assert_array_equal(load_audio(path), untagged)


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


def _random_bytes_mp3(tmp_path: Path) -> Path:
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _truncated_m4a(tmp_path: Path) -> Path:
    """FFmpeg writes the M4A index (moov) after the audio, so the first half has no index."""
    return _first_half_of(_encode(tmp_path / "speech.m4a", "aac", 44100), tmp_path)


def _m4a_with_garbage_audio(tmp_path: Path) -> Path:
    """Index intact, every AAC packet random: the decoder rejects them all, ffmpeg would fail."""
    path = _encode(tmp_path / "garbage.m4a", "aac", 44100)
    data = bytearray(path.read_bytes())
    start, end = data.index(b"mdat") + 4, data.index(b"moov") - 4
    data[start:end] = np.random.default_rng(0).bytes(end - start)
    path.write_bytes(bytes(data))
    return path


def _video_without_audio(tmp_path: Path) -> Path:
    path = tmp_path / "no_sound.mp4"
    with av.open(str(path), "w") as container:
        _write_video_frames(container, _add_video_stream(container, "libx264"), seconds=1.0)
    return path


def _headerless_raw(tmp_path: Path) -> Path:
    path = tmp_path / "speech.raw"
    path.write_bytes(sf.read(AUDIO_DIR / "short.wav", dtype="int16")[0].tobytes())
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
        (_random_bytes_mp3, "Invalid data found"),
        (_truncated_m4a, "cannot decode audio file"),
        (_m4a_with_garbage_audio, "decoder rejected 123 of 123 packets"),
        (_video_without_audio, "no audio stream"),
        (_headerless_raw, "headerless"),
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
