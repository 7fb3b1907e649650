"""The long audio of the speed section: every fixture clip with speech, end to end (~100 s).

Batched decoding pays only where audio spans several 30 s windows, and the real speech the
project can ship is short (LibriVox utterances of 3-7 s, a few words from a card game). So the
real clips come first, then the espeak-ng ones, each followed by half a second of silence: four
windows of different speech, and a true text for the word error rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from whisper.audio import SAMPLE_RATE

from harness.compare.transcripts import FIXTURE_AUDIO, SPEECH, true_text
from harness.inputs.audio import load_audio

CLIPS = [
    SPEECH / "librivox_window.wav",
    *(SPEECH / f"cards_00{i}.wav" for i in range(1, 6)),
    SPEECH / "goforward.wav",
    FIXTURE_AUDIO / "long.wav",
    FIXTURE_AUDIO / "sentences.wav",
]
GAP_S = 0.5


@dataclass(frozen=True)
class LongAudio:
    samples: np.ndarray  # 16 kHz mono float32
    text: str  # the clips' true texts, in order
    clips: tuple[Path, ...]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def long_audio(clips: list[Path] = CLIPS) -> LongAudio:
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    samples = np.concatenate([part for clip in clips for part in (load_audio(clip), gap)])
    text = " ".join(true_text(clip) or "" for clip in clips)
    return LongAudio(samples, " ".join(text.split()), tuple(clips))
