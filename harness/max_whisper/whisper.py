"""``MaxWhisper``: the model openai-whisper's own decoding runs on, every numeric step in MAX.

Both backends go through ``whisper.transcribe`` and ``DecodingTask`` (``harness.pipeline``), so
the tokenizer, prompts, language and task tokens, logit filters, suppression, timestamp rules
and the 30 s windowing of long audio are shared code; only the log-mel, the encoder and the
decoder differ. ``MaxWhisper`` stands in for ``whisper.Whisper`` where decoding calls the model,
and every one of those calls is served by MAX graphs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from whisper.audio import N_FRAMES, N_SAMPLES
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask, detect_language
from whisper.model import ModelDimensions

from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper import greedy
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import Engine
from harness.max_whisper.greedy import GreedyRules
from harness.max_whisper.inference import MaxInference
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.transcribe_hook import max_log_mel
from harness.max_whisper.variant import FAITHFUL, Variant


class MaxWhisper:
    """The attributes and methods of ``whisper.Whisper`` that decoding uses, all run by MAX."""

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
        self.device = torch.device("cpu")  # where decoding keeps its token tensors
        self.is_multilingual = checkpoint.is_multilingual
        self.num_languages = checkpoint.num_languages
        state = checkpoint.state_dict()
        self.log_mel = MaxLogMel(self.dims.n_mels, engine, variant)
        self.audio_encoder = MaxAudioEncoder(self.dims, state, engine, variant)
        identity = checkpoint.identity
        self.text_decoder = MaxTextDecoder(self.dims, state, engine, variant, weights, identity)
        self._loaded = False
        self._first_window: tuple[np.ndarray, Future[torch.Tensor]] | None = None
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
        """Compile what is not compiled yet and bind the weights of every graph transcription
        runs. Its graphs are one MAX module (``Engine.compile_together``): one compile, or one
        read from the store, for the log-mel, the encoder and the decoding graphs."""
        if self._loaded:
            return
        decoding = self.text_decoder.unit("step")
        specs = [self.log_mel.spec, *self.audio_encoder.specs("encoder")]
        self.engine.compile_together(specs + self.text_decoder.specs(*decoding))
        graphs = [(self.audio_encoder, "encoder", "encoder.")]
        graphs += [(self.text_decoder, kind, "decoder.") for kind in ("cross_kv", "step", "select")]
        wanted = [(self.log_mel.binding(), self.log_mel.adopt)]
        wanted += [(g.binding(kind, p), partial(g.adopt, kind, p)) for g, kind, p in graphs]
        models = self.engine.bind_many(dict(binding for binding, _ in wanted))  # one init_all
        for (name, _), adopt in wanted:
            adopt(models[name])
        self._loaded = True

    @contextlib.contextmanager
    def transcribing(self) -> Iterator[None]:
        """What ``pipeline.transcribe`` runs openai-whisper's ``transcribe`` in: every graph
        loaded, the log-mel computed by MAX's, and the first window encoded as soon as its mel
        is there (``_encode_first_window``)."""
        self.load()
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="max-encoder") as pool,
            max_log_mel(self.log_mel, partial(self._encode_first_window, pool)),
        ):
            try:
                yield
            finally:
                self._first_window = None

    def _encode_first_window(self, pool: ThreadPoolExecutor, mel: np.ndarray, padding: int) -> None:
        """Start encoding the window ``transcribe`` decodes first, while it loads its tokenizer
        (~0.06 s of Python the first time in a process): the first 30 s of a mel asked for with
        30 s of padding past the audio, zero-padded as ``pad_or_trim`` pads it. ``decode`` takes
        the result only for exactly that window (``_encoding_ahead``)."""
        if padding != N_SAMPLES:
            return
        content = min(mel.shape[-1] - N_FRAMES, N_FRAMES)
        window = np.zeros((1, mel.shape[0], N_FRAMES), dtype=np.float32)
        window[0, :, :content] = mel[:, :content]
        self._first_window = (window, pool.submit(self.encoder, torch.from_numpy(window)))

    def log_mel_spectrogram(self, audio: np.ndarray) -> torch.Tensor:
        """(n_mels, frames) of ``audio`` by MAX's log-mel graph (``pipeline.log_mel``)."""
        return torch.from_numpy(self.log_mel(audio))

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        """One encoding at a time: language identification may ask while the first window's
        encoding is under way (``_encode_first_window``)."""
        with self._encoding:
            return torch.from_numpy(self.audio_encoder(mel.float().numpy()))

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
    ) -> Iterator[Future[torch.Tensor] | None]:
        """The encoder started on a thread of its own (for a transcription's first window,
        earlier still: ``_encode_first_window``) while openai-whisper builds the decoding task:
        its tokenizer and suppression list are ~0.15 s of Python the first time in a process,
        and MAX's encoder runs outside the GIL. Tiny.en's encoder and that setup took
        0.49 s one after the other, 0.37-0.40 together. None where the task would not encode
        (features given, or float16 asked for, which this float32 encoder does not serve)."""
        d = self.dims
        if options.fp16 or mel.shape[-2:] == (d.n_audio_ctx, d.n_audio_state):
            yield None
            return
        first, self._first_window = self._first_window, None
        if first and np.array_equal(first[0], mel.numpy()):
            yield first[1]
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="max-encoder") as pool:
            yield pool.submit(self.encoder, mel)  # leaving waits for it, on error too


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
        encoding: Future[torch.Tensor] | None = None,
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
        return self.encoding.result()

    def _main_loop(
        self, audio_features: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """Greedy at temperature 0: ``greedy.main_loop``, each token chosen in MAX. Otherwise
        (beam search, sampling) openai-whisper's loop over ``MaxInference``."""
        if self.rules is None:
            return super()._main_loop(audio_features, tokens)
        return greedy.main_loop(self, self.model.text_decoder, self.rules, audio_features, tokens)
