"""``MaxWhisper``: the model openai-whisper's own decoding runs on, every numeric step in MAX.

Both backends go through ``whisper.transcribe`` and ``DecodingTask`` (``harness.pipeline``), so
the tokenizer, prompts, language and task tokens, logit filters, suppression, timestamp rules
and the 30 s windowing of long audio are shared code; only the log-mel, the encoder and the
decoder differ. ``MaxWhisper`` stands in for ``whisper.Whisper`` where decoding calls the model,
and every one of those calls is served by MAX graphs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask, detect_language

from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper import greedy
from harness.max_whisper.engine import Engine
from harness.max_whisper.greedy import GreedyRules
from harness.max_whisper.inference import MaxInference
from harness.max_whisper.parts import MaxParts, first_window
from harness.max_whisper.transcribe_hook import max_log_mel
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.openai_whisper import N_SAMPLES, ModelDimensions


class MaxWhisper:
    """The attributes and methods of ``whisper.Whisper`` that decoding uses, all run by MAX."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        engine: Engine,
        variant: Variant = FAITHFUL,
        weights: str = "float32",
        parts: MaxParts | None = None,
    ) -> None:
        """The first four as ``MaxParts`` takes them; ``parts``: this checkpoint's MAX graphs
        made already (a transcription ``start``ed before PyTorch was imported), else made here."""
        self.parts = parts or MaxParts(checkpoint, engine, variant, weights)
        self.weights, self.engine, self.dims = self.parts.weights, engine, checkpoint.dims
        self.log_mel = self.parts.log_mel
        self.audio_encoder = self.parts.audio_encoder
        self.text_decoder = self.parts.text_decoder
        self.device = torch.device("cpu")  # where decoding keeps its token tensors
        self.is_multilingual = checkpoint.is_multilingual
        self.num_languages = checkpoint.num_languages
        # windows of a transcription's mel and their encodings, started before asked for
        self._under_way: list[tuple[np.ndarray, Future[np.ndarray]]] = []

    @property
    def name(self) -> str:
        return self.parts.name

    @property
    def label(self) -> str:
        return self.parts.label

    def load(self) -> None:
        self.parts.load()

    @contextlib.contextmanager
    def transcribing(self) -> Iterator[None]:
        """What ``pipeline.transcribe`` runs openai-whisper's ``transcribe`` in: every graph
        loaded, the log-mel computed by MAX's, and the first window encoded as soon as its mel
        is there (``_transcription_mel``)."""
        self.load()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="max-encoder") as pool:
            with max_log_mel(self.dims.n_mels, partial(self._transcription_mel, pool)):
                try:
                    yield
                finally:
                    self._under_way, self.parts.started = [], None

    def _transcription_mel(
        self, pool: ThreadPoolExecutor, audio: np.ndarray, padding: int
    ) -> np.ndarray:
        """The log-mel ``transcribe`` asks for; for the mel of a whole transcription (30 s of
        padding past the audio), its first window's encoding is started at once, on the
        encoder's thread, while ``transcribe`` loads its tokenizer (~0.06 s of Python the first
        time in a process): or was, with the mel, if the parts ``start``ed this very audio.
        ``encoder`` and ``decode`` take an encoding only for exactly its window."""
        started, self.parts.started = self.parts.started, None
        if padding != N_SAMPLES:
            return self.log_mel(audio, padding=padding)
        if started and np.array_equal(started.audio, audio):
            mel = started.mel.result()
            self._under_way = [(window(mel), encoding) for window, encoding in started.encodings]
        else:
            mel = self.log_mel(audio, padding=padding)
            window = first_window(mel)
            self._under_way = [(window, pool.submit(self.parts.encode, window))]
        return mel

    def _encoding_under_way(self, mel: np.ndarray) -> Future[np.ndarray] | None:
        return next(
            (e for w, e in self._under_way if w.shape == mel.shape and np.array_equal(w, mel)),
            None,
        )

    def log_mel_spectrogram(self, audio: np.ndarray) -> torch.Tensor:
        """(n_mels, frames) of ``audio`` by MAX's log-mel graph (``pipeline.log_mel``)."""
        return torch.from_numpy(self.log_mel(audio))

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        """Audio features of ``mel``: the encoding under way where it is one of a transcription's
        windows started early (language identification's, ``MaxParts.start``)."""
        array = mel.float().numpy()
        under_way = self._encoding_under_way(array)
        if under_way is not None:
            return torch.from_numpy(under_way.result())
        return torch.from_numpy(self.parts.encode(array))

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Whole-sequence logits, uncached: what ``detect_language`` asks of the model."""
        self.text_decoder.reset()
        logits = self.text_decoder.logits(tokens.numpy(), audio_features.numpy())
        self.text_decoder.reset()
        return torch.from_numpy(logits)

    detect_language = detect_language

    @torch.no_grad()
    def decode(
        self, mel: torch.Tensor, options: DecodingOptions | None = None, **kwargs: Any
    ) -> DecodingResult | list[DecodingResult]:
        """``whisper.decode`` with MAX behind it: same signature, same results type."""
        single = mel.ndim == 2
        options = replace(options or DecodingOptions(), **kwargs)
        batch = mel.unsqueeze(0) if single else mel
        with glue_threads(), self._encoding_ahead(batch, options) as encoding:
            results = MaxDecodingTask(self, options, encoding).run(batch)
        return results[0] if single else results

    @contextlib.contextmanager
    def _encoding_ahead(
        self, mel: torch.Tensor, options: DecodingOptions
    ) -> Iterator[Future[np.ndarray] | None]:
        """The encoder started on a thread of its own (for a transcription's first window,
        earlier still: ``_transcription_mel``) while openai-whisper builds the decoding task:
        its tokenizer and suppression list are ~0.15 s of Python the first time in a process,
        and MAX's encoder runs outside the GIL. Tiny.en's encoder and that setup took
        0.49 s one after the other, 0.37-0.40 together. None where the task would not encode
        (features given, or float16 asked for, which this float32 encoder does not serve)."""
        d = self.dims
        if options.fp16 or mel.shape[-2:] == (d.n_audio_ctx, d.n_audio_state):
            yield None
            return
        under_way, self._under_way = self._encoding_under_way(mel.numpy()), []
        if under_way is not None:
            yield under_way
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="max-encoder") as pool:
            yield pool.submit(self.parts.encode, mel.float().numpy())  # leaving waits for it


@contextlib.contextmanager
def glue_threads() -> Iterator[None]:
    """One PyTorch thread for decoding's glue (logit filters, token bookkeeping) around MAX.

    PyTorch's OpenMP workers keep spinning after each parallel op and fight MAX's own thread
    pool for the cores: on 2 cores a MAX decoding step took 15.8 ms between multi-threaded
    logit filters and 7.7 ms with them on one thread. The model's work is all MAX's here.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class SetUpModel:
    """What ``DecodingTask.__init__`` reads of a model: dims, languages, and the decoder's blocks
    for the ``PyTorchInference`` it builds (none here: ``MaxDecodingTask`` replaces it before
    anything runs). No PyTorch model is built on the MAX path."""

    dims: ModelDimensions
    is_multilingual: bool
    num_languages: int
    decoder: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(blocks=()))


class MaxDecodingTask(DecodingTask):
    """openai-whisper's ``DecodingTask`` whose inference, encoder and language id are MAX's."""

    def __init__(
        self,
        model: MaxWhisper,
        options: DecodingOptions,
        encoding: Future[np.ndarray] | None = None,
    ) -> None:
        """``encoding``: the audio features of the mel ``run`` will get, already under way."""
        super().__init__(
            SetUpModel(model.dims, model.is_multilingual, model.num_languages), options
        )
        self.model = model
        self.encoding = encoding
        self.inference = MaxInference(model.text_decoder, read=[self.sot_index])
        if options.beam_size is not None:
            self.decoder.inference = self.inference
        self.rules = GreedyRules.of(self, model.dims.n_vocab)

    def _get_audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        if self.encoding is None:
            return super()._get_audio_features(mel)
        return torch.from_numpy(self.encoding.result())

    def _main_loop(
        self, audio_features: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """Greedy at temperature 0: ``greedy.main_loop``, each token chosen in MAX. Otherwise
        (beam search, sampling) openai-whisper's loop over ``MaxInference``."""
        if self.rules is None:
            return super()._main_loop(audio_features, tokens)
        return greedy.main_loop(self, self.model.text_decoder, self.rules, audio_features, tokens)
