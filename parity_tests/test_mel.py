"""The MAX log-mel spectrogram against ``whisper.log_mel_spectrogram`` on the fixture clips.

Two uses are covered: the 30 s window the encoder takes (``pad_or_trim``), and the whole
recording with 30 s of zeros appended, which is what ``whisper.transcribe()`` computes before
slicing windows (different lengths through the one graph with a symbolic sample count).
Spectrograms are compared as (frames, n_mels), so ``min_frame_cosine`` is per frame.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import N_SAMPLES

from harness.compare import tolerances
from harness.compare.metrics import Metrics, compare
from harness.errors import HarnessError
from harness.inputs.audio import load_audio
from harness.max_whisper.engine import Engine
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.transcribe_hook import TRANSCRIBE_MODULE, max_log_mel
from harness.max_whisper.variant import Variant
from harness.paths import FIXTURES

AUDIO_DIR = FIXTURES / "audio"
CLIPS = ["short.wav", "sentences.wav", "long.wav", "silence.wav"]


# Upper bounds for rel_l2 and max_abs, lower bounds for the cosines. The log-mel is
# (log10(power) + 4) / 4, clamped to 8 decades of power. Both sides compute a float32 DFT (FFT
# there, a matmul here) whose error is absolute, ~eps·√400·‖frame‖, so it is largest relative to
# the quietest bins, which the log then amplifies: rounding whisper's Hann window differently
# (1 ulp) alone moves torch's own output by up to 4.7e-5. "Slip" below is the subtlest real
# porting bug measured on these clips: a symmetric instead of periodic Hann window.
def violations(metrics: Metrics) -> list[str]:
    """The metrics outside the ``mel`` tolerances of fixtures/tolerances.json."""
    return tolerances.load("float32").violations(metrics, "mel")


def mel_metrics(mel: MaxLogMel, audio: np.ndarray, padding: int = 0) -> Metrics:
    """MAX against whisper on the same samples, as (frames, n_mels)."""
    candidate = mel(audio, padding=padding)
    reference = whisper.log_mel_spectrogram(audio, mel.n_mels, padding=padding).numpy()
    return compare(candidate.T, reference.T)


@pytest.fixture(scope="module")
def mel80(engine: Engine) -> MaxLogMel:
    return MaxLogMel(80, engine)


@pytest.fixture(scope="module")
def mel128(engine: Engine) -> MaxLogMel:
    return MaxLogMel(128, engine)


@pytest.fixture(scope="module")
def mel_no_clamp(engine: Engine) -> MaxLogMel:
    return MaxLogMel(80, engine, Variant(mel_log_clamp=False))


def clip(name: str) -> np.ndarray:
    return load_audio(AUDIO_DIR / name)


@pytest.mark.parametrize("name", CLIPS)
def test_30s_window_matches_whisper(mel80: MaxLogMel, name: str) -> None:
    window = whisper.pad_or_trim(clip(name))
    assert mel80(window).shape == (80, 3000)
    metrics = mel_metrics(mel80, window)
    assert not violations(metrics), metrics


@pytest.mark.parametrize("name", CLIPS)
def test_whole_audio_padded_for_transcribe_matches_whisper(mel80: MaxLogMel, name: str) -> None:
    audio = clip(name)
    assert mel80(audio, padding=N_SAMPLES).shape == (80, (audio.size + N_SAMPLES) // 160)
    metrics = mel_metrics(mel80, audio, padding=N_SAMPLES)
    assert not violations(metrics), metrics


@pytest.mark.parametrize("padding", [0, N_SAMPLES])
def test_128_mels_match_whisper(mel128: MaxLogMel, padding: int) -> None:
    metrics = mel_metrics(mel128, clip("sentences.wav"), padding=padding)
    assert not violations(metrics), metrics


@pytest.mark.parametrize("size", [201, 320, 359, 360, 16_000, 16_001, 16_040, 16_041, 16_159])
def test_every_length_frames_like_torch_stft(mel80: MaxLogMel, size: int) -> None:
    """Lengths around the hop and the 40-sample reach of the last kept frame into the reflection."""
    audio = clip("sentences.wav")[8000 : 8000 + size]
    metrics = mel_metrics(mel80, audio)
    assert not violations(metrics), metrics


def test_too_short_audio_is_a_clear_error(mel80: MaxLogMel) -> None:
    with pytest.raises(HarnessError, match="more than 200 samples"):
        mel80(np.zeros(200, dtype=np.float32))


def test_without_the_log_clamp_quiet_parts_fall_below_the_floor(
    mel_no_clamp: MaxLogMel, float32_tolerances
) -> None:
    """The fault shows only where whisper clamps (the zero padding) and matches elsewhere."""
    max_abs = float32_tolerances.limit("mel", "max_abs")
    window = whisper.pad_or_trim(clip("short.wav"))
    candidate = mel_no_clamp(window)
    reference = whisper.log_mel_spectrogram(window).numpy()
    clamped = reference == reference.min()
    assert compare(candidate.T, reference.T)["max_abs"] > 100 * max_abs
    assert np.all(candidate[clamped] < reference[clamped])
    assert np.max(np.abs(candidate - reference)[~clamped]) <= max_abs


def test_transcribe_computes_its_mel_through_max_only_inside_the_context() -> None:
    """A stub model stops ``transcribe()`` right after its mel call; the name is restored after."""

    class Stop(Exception):
        pass

    class SpyMel:
        n_mels = 80

        def __init__(self) -> None:
            self.paddings: list[int] = []

        def __call__(self, audio: np.ndarray, padding: int = 0) -> np.ndarray:
            self.paddings.append(padding)
            raise Stop

    original = TRANSCRIBE_MODULE.log_mel_spectrogram
    model = SimpleNamespace(device=torch.device("cpu"), dims=SimpleNamespace(n_mels=80))
    with pytest.raises(Stop), max_log_mel(80, spy := SpyMel()):
        whisper.transcribe(model, np.zeros(16_000, dtype=np.float32), fp16=False)
    assert spy.paddings == [N_SAMPLES]
    assert TRANSCRIBE_MODULE.log_mel_spectrogram is original


def test_hook_returns_whispers_tensor_from_the_max_mel(mel80: MaxLogMel) -> None:
    audio = clip("short.wav")
    with max_log_mel(mel80.n_mels, mel80):
        hooked = TRANSCRIBE_MODULE.log_mel_spectrogram(str(AUDIO_DIR / "short.wav"), 80, N_SAMPLES)
        with pytest.raises(HarnessError, match="expects 128 mel bands"):
            TRANSCRIBE_MODULE.log_mel_spectrogram(audio, 128)
    assert isinstance(hooked, torch.Tensor) and hooked.dtype == torch.float32
    np.testing.assert_array_equal(hooked.numpy(), mel80(audio, padding=N_SAMPLES))
