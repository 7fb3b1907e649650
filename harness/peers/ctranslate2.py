"""CTranslate2, the engine behind faster-whisper, run on the same checkpoint as PyTorch and MAX.

People who want Whisper fast on a CPU pick faster-whisper, usually with int8 weights, so that is
the peer MAX is measured against, for speed and for fidelity. The model folder is the checkpoint
itself: a pretrained package's CTranslate2 folder as shipped when the checkpoint was read from it,
otherwise the checkpoint's own weights written out in CTranslate2's format (the reverse of
``ctranslate2_format``'s reader), so all three engines run the very same weights. ``compute_type``
is CTranslate2's own: ``float32``, or ``int8`` quantised by CTranslate2 when it loads the model.

Decoding here calls CTranslate2's ``generate`` from the encoder output, greedy, so every engine
decodes from the same features; end to end is faster-whisper's ``WhisperModel.transcribe``, greedy
at temperature 0 with no fallback, as the harness runs openai-whisper's ``transcribe``.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import whisper

from harness.errors import HarnessError
from harness.inputs import ctranslate2_format, pretrained
from harness.inputs.checkpoints import Checkpoint
from harness.paths import cache_dir
from harness.pipeline.batched import BATCH_SIZE
from harness.pipeline.transcribe import Transcript

COMPUTE_TYPES = ("float32", "int8")
# Files beside model.bin: faster-whisper's tokenizer, and CTranslate2's vocabulary (.txt or
# .json) and config (suppressed tokens, language ids); from the packaged model of the same
# vocabulary. Each folder needs the first two and a vocabulary.
SIDE_FILES = ("tokenizer.json", "config.json")
VOCABULARIES = ("vocabulary.txt", "vocabulary.json")
# vocabulary size -> the packaged model whose side files fit it
SIDE_FILES_FROM = {51864: "tiny.en", 51865: "base"}
FOLDER_FORMAT = 1  # bump when what model_folder writes changes


def versions() -> dict[str, str]:
    return {"ctranslate2": version("ctranslate2"), "faster-whisper": version("faster-whisper")}


def model_folder(checkpoint: Checkpoint) -> Path:
    """A CTranslate2 Whisper folder holding ``checkpoint``'s weights.

    A checkpoint read from a single ``model.bin`` that has its tokenizer beside it (tiny.en's
    package, a user's folder) is used where it lies; any other is written once to the cache,
    keyed by its sha256, with the side files of the packaged model of the same vocabulary.
    """
    files = [Path(f) for f in checkpoint.source.get("files", [])]
    if len(files) == 1 and files[0].name == "model.bin" and _complete(files[0].parent):
        return files[0].parent
    folder = (
        cache_dir() / "max-whisper" / f"ctranslate2-model-{checkpoint.sha256[:16]}-v{FOLDER_FORMAT}"
    )
    if not (folder / "model.bin").is_file():
        _write_folder(checkpoint, folder)
    if not _complete(folder):
        raise HarnessError(
            f"{folder}: no tokenizer.json, config.json and vocabulary beside model.bin"
        )
    return folder


def _write_folder(checkpoint: Checkpoint, folder: Path) -> None:
    """model.bin from the state dict and the side files, into ``folder`` whole or not at all."""
    donor = SIDE_FILES_FROM.get(checkpoint.dims.n_vocab)
    if donor is None or not pretrained.installed(donor):
        raise HarnessError(
            f"{checkpoint.path}: no tokenizer.json/config.json for CTranslate2 with a vocabulary "
            f"of {checkpoint.dims.n_vocab} (they come from the tiny.en or base weight package)"
        )
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = checkpoint.state_dict()
    spec = ctranslate2_format.from_whisper_checkpoint(state, asdict(checkpoint.dims))
    ctranslate2_format.write(staging / "model.bin", spec["variables"], spec["aliases"])
    side = pretrained.PACKAGED[donor].parts[-1].path().parent
    for name in (*SIDE_FILES, *VOCABULARIES):
        if (side / name).is_file():
            shutil.copyfile(side / name, staging / name)
    staging.replace(folder)


def _complete(folder: Path) -> bool:
    have = {path.name for path in folder.iterdir()}
    return set(SIDE_FILES) <= have and bool(have & set(VOCABULARIES))


@dataclass
class CTranslate2Whisper:
    """One CTranslate2 Whisper model at one compute type, and faster-whisper over it."""

    folder: Path
    compute_type: str
    threads: int
    eot: int  # suppressed in timed decoding, so every engine decodes the same count

    @property
    def name(self) -> str:
        return f"ct2-{self.compute_type}"

    @property
    def label(self) -> str:
        return f"CTranslate2 {self.compute_type}"

    @cached_property
    def model(self) -> Any:
        import ctranslate2

        return ctranslate2.models.Whisper(
            str(self.folder),
            device="cpu",
            compute_type=self.compute_type,
            intra_threads=self.threads,
        )

    @cached_property
    def faster_whisper(self) -> Any:
        from faster_whisper import WhisperModel

        return WhisperModel(
            str(self.folder), device="cpu", compute_type=self.compute_type, cpu_threads=self.threads
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(batch, n_mels, 3000) log-mel -> (batch, 1500, state) float32 audio features."""
        return np.array(self.model.encode(_storage(mel), to_cpu=True))

    def generate(self, features: np.ndarray, prompt: list[int], tokens: int, **options: Any) -> Any:
        """Greedy ``tokens`` steps after ``prompt``. CTranslate2 4.8's Whisper takes at most
        ``min(max_length // 2, max_length - len(prompt) + 1)`` steps (measured with prompts of 2
        and 4 tokens: 12 gives 6, 448 gives 224), hence the ``max_length`` asked for."""
        return self.model.generate(
            _storage(features),
            [prompt],
            beam_size=1,
            max_length=max(2 * tokens, tokens + len(prompt) - 1),
            suppress_blank=False,
            **options,
        )[0]

    def decode_seconds(self, prompt: list[int], features: np.ndarray, tokens: int) -> float:
        """Seconds per token of greedy decoding: the marginal cost between ``tokens`` and a
        quarter of them, so the prompt's forward pass and the call's set-up cancel out.

        An untimed one-token call comes first, as the prompt's pass does for PyTorch and MAX: the
        first call after another engine's turn is slower (base float32, a 12-token call after
        MAX's turn: 342-366 ms, after the one-token call 218-243; the 48-token call unchanged),
        and timed it shrank the marginal cost (10.2 against 12.25 ms per token in those runs)."""
        few = max(1, tokens // 4)
        self.generate(features, prompt, 1, suppress_tokens=[self.eot])
        elapsed = {}
        for count in (few, tokens):
            start = time.perf_counter()
            result = self.generate(features, prompt, count, suppress_tokens=[self.eot])
            elapsed[count] = time.perf_counter() - start
            if len(result.sequences_ids[0]) != count:
                raise HarnessError(
                    f"CTranslate2 decoded {len(result.sequences_ids[0])} tokens, asked {count}"
                )
        return (elapsed[tokens] - elapsed[few]) / (tokens - few)

    def next_token_logits(self, tokens: np.ndarray, features: np.ndarray, start: int) -> np.ndarray:
        """(1, n - start + 1, vocab): teacher-forced logits at positions ``start - 1 .. n - 1``.

        ``tokens`` is the start sequence (``start`` tokens) and the text. CTranslate2 forces the
        prompt's tokens after the start sequence as a prefix and, with ``return_logits_vocab``,
        returns the raw logits of every step it takes, forced ones included: row ``j`` is
        position ``start - 1 + j`` (checked against PyTorch's, English-only and multilingual).
        A multilingual model takes one step more than asked; its extra row is dropped. One call
        teacher-forces the whole text.
        """
        steps = tokens.shape[1] - start + 1
        prompt = [int(t) for t in tokens[0]]
        result = self.generate(
            features, prompt, steps, suppress_tokens=[], return_logits_vocab=True
        )
        logits = np.array(result.logits[0])
        if logits.shape[0] < steps:
            raise HarnessError(f"CTranslate2 gave {logits.shape[0]} logit rows, expected {steps}")
        return logits[None, :steps]

    def transcribe(self, audio: np.ndarray, language: str | None = "en") -> Transcript:
        """faster-whisper end to end, greedy at temperature 0, as the harness's ``transcribe``."""
        segments, info = self.faster_whisper.transcribe(
            audio, language=language, beam_size=1, temperature=0.0
        )
        segments = list(segments)
        return _transcript(segments, "".join(s.text for s in segments), info.language)

    def transcribe_batched(
        self,
        audio: np.ndarray,
        bounds: list[tuple[int, int]],
        language: str | None = "en",
        batch_size: int = BATCH_SIZE,
    ) -> Transcript:
        """faster-whisper's ``BatchedInferencePipeline`` on the chunks ``bounds`` (samples), as
        ``batched.transcribe_batched`` decodes them: greedy, temperature 0, no timestamps."""
        from faster_whisper import BatchedInferencePipeline

        rate = whisper.audio.SAMPLE_RATE
        clips = [{"start": start / rate, "end": end / rate} for start, end in bounds]
        segments, info = BatchedInferencePipeline(self.faster_whisper).transcribe(
            audio,
            language=language,
            clip_timestamps=clips,
            batch_size=batch_size,
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return _transcript(segments, text, info.language)


def _transcript(segments: list[Any], text: str, language: str) -> Transcript:
    """faster-whisper's segments as the harness's ``Transcript``, ``text`` their joined text."""
    tokens = [t for s in segments for t in s.tokens]
    as_dicts = [{"seek": s.seek, "start": s.start, "end": s.end, "text": s.text} for s in segments]
    return Transcript(text, tokens, language, as_dicts)


# What a faster-whisper user runs once per file: load the model, transcribe, print the text.
FIRST_TRANSCRIPT_SCRIPT = """
import sys
from faster_whisper import WhisperModel
folder, compute_type, threads, clip, language = sys.argv[1:]
model = WhisperModel(folder, device="cpu", compute_type=compute_type, cpu_threads=int(threads))
segments, _ = model.transcribe(clip, language=language or None, beam_size=1, temperature=0.0)
print("".join(segment.text for segment in segments).strip())
"""


def first_transcript_command(
    peer: CTranslate2Whisper, clip: Path, language: str | None
) -> list[str]:
    """A new Python process running faster-whisper on ``clip``, as its users' scripts do."""
    return [
        sys.executable,
        "-c",
        FIRST_TRANSCRIPT_SCRIPT,
        str(peer.folder),
        peer.compute_type,
        str(peer.threads),
        str(clip),
        language or "",
    ]


def _storage(array: np.ndarray) -> Any:
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array, dtype=np.float32))


def peers(checkpoint: Checkpoint, threads: int) -> list[CTranslate2Whisper]:
    """CTranslate2 at each compute type on ``checkpoint``'s weights."""
    folder = model_folder(checkpoint)
    eot = whisper.tokenizer.get_tokenizer(
        checkpoint.is_multilingual, num_languages=checkpoint.num_languages
    ).eot
    return [CTranslate2Whisper(folder, kind, threads, eot) for kind in COMPUTE_TYPES]


def describe(peer: CTranslate2Whisper) -> dict[str, Any]:
    return {"label": peer.label, "compute_type": peer.compute_type, "folder": str(peer.folder)}
