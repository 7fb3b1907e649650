"""The MAX model of one checkpoint, with no PyTorch: its log-mel, encoder and decoder graphs.

``MaxWhisper`` (``whisper.py``) puts openai-whisper's decoding on these parts, and that needs
PyTorch, whose import takes ~1 s here. Nothing in this module needs it, so a transcription can
start here first (``start``: load the graphs, compute the log-mel, encode the first window,
on a thread of its own and outside the GIL) while the main thread imports PyTorch and
openai-whisper (``harness.cli``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import Engine
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.openai_whisper import N_FRAMES, N_SAMPLES

if TYPE_CHECKING:
    from harness.inputs.checkpoints import Checkpoint


# A window of a transcription's mel: (mel with 30 s of padding) -> (1, n_mels, N_FRAMES)
Window = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Started:
    """A transcription begun before it was asked for (``MaxParts.start``): its audio, the
    log-mel of it as ``whisper.transcribe`` pads it, and encodings of windows of that mel."""

    audio: np.ndarray
    mel: Future[np.ndarray]
    encodings: list[tuple[Window, Future[np.ndarray]]]


class MaxParts:
    """The graphs of one checkpoint that a transcription runs, bound to its weights."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        engine: Engine,
        variant: Variant = FAITHFUL,
        weights: str = "float32",
    ) -> None:
        """``weights``: how the decoding step stores its matrices (``quantized.WeightsMode``
        spec: ``float32``, ``q4_0``, ``float16:logits``, ...); every other graph is float32."""
        self.weights = weights
        self.engine = engine
        self.dims = checkpoint.dims
        self.identity = checkpoint.identity  # which file's weights these graphs bind
        state = checkpoint.arrays()
        self.log_mel = MaxLogMel(self.dims.n_mels, engine, variant)
        self.audio_encoder = MaxAudioEncoder(self.dims, state, engine, variant)
        self.text_decoder = MaxTextDecoder(
            self.dims, state, engine, variant, weights, self.identity
        )
        self.started: Started | None = None
        self._loaded = False
        self._loading = threading.Lock()  # ``start``'s thread and the caller may both load
        self._encoding = threading.Lock()

    @property
    def name(self) -> str:
        """Its key in parity.json: ``max`` for float32 weights, ``max-<weights>`` otherwise."""
        return "max" if self.weights == "float32" else f"max-{self.weights}"

    @property
    def label(self) -> str:
        dtype = self.engine.dtype.name
        return f"MAX {dtype}" if self.weights == "float32" else f"MAX {self.weights} decoding"

    def load(self) -> None:
        """Compile what is not compiled yet (``compile``) and bind the weights of every graph
        transcription runs, with one ``init_all``."""
        if self._loaded:  # every transcription asks
            return
        self.compile()
        with self._loading:
            if self._loaded:
                return
            graphs = [(self.audio_encoder, "encoder", "encoder.")]
            graphs += [(self.text_decoder, k, "decoder.") for k in ("cross_kv", "step", "select")]
            wanted = [(self.log_mel.binding(), self.log_mel.adopt)]
            wanted += [(g.binding(kind, p), partial(g.adopt, kind, p)) for g, kind, p in graphs]
            models = self.engine.bind_many(dict(binding for binding, _ in wanted))
            for (name, _), adopt in wanted:
                adopt(models[name])
            self._loaded = True

    def compile(self) -> None:
        """The graphs transcription runs, as one MAX module (``Engine.compile_together``): one
        compile, or one read from the store, for the log-mel, the encoder and the decoding
        graphs. On the thread that imported MAX: building a graph needs MAX's MLIR context,
        which is entered there and in no other thread."""
        decoding = self.text_decoder.unit("step")
        specs = [self.log_mel.spec, *self.audio_encoder.specs("encoder")]
        self.engine.compile_together(specs + self.text_decoder.specs(*decoding))

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(batch, n_mels, N_FRAMES) -> audio features. One encoding at a time: language
        identification may ask while a first window's encoding is under way."""
        with self._encoding:
            return self.audio_encoder(mel)

    def start(self, audio: np.ndarray, identify_language: bool = False) -> None:
        """Begin transcribing ``audio`` before anyone asks: on a thread of its own, bind every
        graph, compute the log-mel as ``whisper.transcribe`` will ask for it (30 s of padding
        past the audio), then encode the windows it asks for first, in its order: the one it
        identifies the language on (``identify_language``), then the first one it decodes.
        ``MaxWhisper.transcribing`` takes them when ``transcribe`` asks for exactly those."""
        self.compile()  # here, not on the thread (see there); a read from the store, mostly
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="max-encoder")
        mel = pool.submit(self._loaded_mel, audio)
        windows = [language_window] if identify_language else []
        encodings = [
            (window, pool.submit(lambda w: self.encode(w(mel.result())), window))
            for window in [*windows, first_window]
        ]
        pool.shutdown(wait=False)  # the tasks still run, one after the other
        self.started = Started(audio, mel, encodings)

    def _loaded_mel(self, audio: np.ndarray) -> np.ndarray:
        self.load()
        return self.log_mel(audio, padding=N_SAMPLES)


def language_window(mel: np.ndarray) -> np.ndarray:
    """(1, n_mels, N_FRAMES): the window ``transcribe`` identifies the language on, of a mel
    computed with 30 s of padding past the audio: its first N_FRAMES frames as they are
    (``pad_or_trim``), the padding's own log-mel included."""
    return np.ascontiguousarray(mel[None, :, :N_FRAMES])


def first_window(mel: np.ndarray) -> np.ndarray:
    """(1, n_mels, N_FRAMES): the window ``transcribe`` decodes first, of a mel computed with 30 s
    of padding past the audio, zero-padded as ``pad_or_trim`` pads it."""
    content = min(mel.shape[-1] - N_FRAMES, N_FRAMES)
    window = np.zeros((1, mel.shape[0], N_FRAMES), dtype=np.float32)
    window[0, :, :content] = mel[:, :content]
    return window
