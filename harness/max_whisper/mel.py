"""openai-whisper's ``log_mel_spectrogram`` as one MAX graph, for audio of any length.

What whisper does, and where this graph reproduces it (``whisper/audio.py``):

1. ``padding`` zeros are appended to the audio (``F.pad``). Done in NumPy: it only fixes the
   input length, and the zeros enter the STFT exactly like in whisper.
2. ``torch.stft(center=True)`` reflect-pads ``N_FFT // 2`` = 200 samples at each end (the edge
   sample itself is not repeated), then takes frames of ``N_FFT`` = 400 samples every
   ``HOP_LENGTH`` = 160. In-graph: ``ops.pad(mode="reflect")`` has the same semantics.
3. whisper drops the last STFT frame (``stft[..., :-1]``), so ``n // 160`` frames remain for
   ``n`` samples; the dropped frame is the only one that would read past
   ``160·(n // 160 + 2)`` padded samples. The graph therefore keeps exactly those samples,
   reshapes them into hop-sized rows and builds frame ``t`` as rows ``t``, ``t+1`` and the first
   80 samples of ``t+2`` (400 = 160 + 160 + 80): no gather, and the number of frames is a
   symbolic dimension, so one compiled graph serves the 30 s window and whole recordings.
4. The Hann-windowed DFT is one matmul with a precomputed (400, 2·201) basis (whisper's float32
   window folded into float64 cos/sin, rounded once to float32); power is re² + im², like
   ``|stft|²``. It differs from torch's FFT only in the order of float32 rounding.
5. Mel projection, ``log10(clamp(min=1e-10))``, the clamp to 8 decades below the maximum *of
   the whole input* (a global reduction in-graph, so long audio is not split into windows with
   their own maxima) and ``(x + 4) / 4``.

Everything is computed in float32, like whisper on a float32 waveform, whatever the dtype of
the model the mel feeds.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from max.dtype import DType
from max.engine import Model
from max.graph import Dim, Graph, Module, TensorType, TensorValue, ops

from harness.errors import HarnessError
from harness.max_whisper.engine import Engine, GraphSpec, to_numpy
from harness.max_whisper.graphs import source_digest
from harness.max_whisper.host_arrays import HostArray
from harness.max_whisper.layers import Scope
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.openai_whisper import HOP_LENGTH, N_FFT, mel_filters
from harness.paths import cache_dir, write_text_whole

N_BINS = N_FFT // 2 + 1  # rfft bins, DC to Nyquist
CENTER_PAD = N_FFT // 2  # torch.stft(center=True) reflect padding on each side


def dft_basis() -> np.ndarray:
    """(N_FFT, 2·N_BINS) float32: Hann-windowed cos | −sin, so ``frames @ basis`` = re | im.

    The window is whisper's own float32 ``torch.hann_window(N_FFT)``, not a float64 Hann rounded
    anew: 320 of its 400 values differ by an ulp, which moves near-floor log-mel values by ~1e-5.
    The phase index ``n·k`` is reduced mod N_FFT so every angle is exact in float64, and the
    windowed basis is rounded to float32 once.
    """
    window = hann_window().astype(np.float64)
    n = np.arange(N_FFT)
    angle = 2 * np.pi * (np.outer(n, np.arange(N_BINS)) % N_FFT) / N_FFT
    basis = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1) * window[:, None]
    return basis.astype(np.float32)


def hann_window() -> np.ndarray:
    """whisper's window, ``torch.hann_window(N_FFT)`` in float32, kept in the cache once
    computed, so that a transcription on MAX need not import PyTorch (``host_arrays.py``).
    PyTorch's vectorised cosine is not NumPy's (their float32 windows differ in 26 of 400
    values here), so the window is PyTorch's own; it is kept per installed PyTorch (its
    ``__init__.py``'s path and modification time), which computed it."""
    torch_init = Path(find_spec("torch").origin)  # found, not imported
    installed = f"{torch_init}:{torch_init.stat().st_mtime_ns}"
    tag = hashlib.sha256(installed.encode()).hexdigest()[:16]
    path = cache_dir() / "max-whisper" / f"hann-window-{N_FFT}-{tag}.json"
    try:
        window = np.array(json.loads(path.read_text()), dtype=np.float32)
    except (OSError, ValueError):
        window = None
    if window is not None and window.shape == (N_FFT,):
        return window
    import torch  # noqa: PLC0415 - only to compute the window once

    window = torch.hann_window(N_FFT, dtype=torch.float32).numpy()
    write_text_whole(path, json.dumps(window.tolist()))  # float32 values are exact in JSON
    return window


def frames(padded: TensorValue, n_frames: Dim) -> TensorValue:
    """(samples + 2·CENTER_PAD,) -> (n_frames, N_FFT): frame t starts at padded[t·HOP_LENGTH]."""
    rows = n_frames + 2
    hops = ops.reshape(_leading(padded, 0, rows * HOP_LENGTH), [rows, HOP_LENGTH])
    parts = [
        _leading(hops, 0, n_frames),
        _leading(hops, 1, n_frames),
        _leading(hops, 2, n_frames)[:, : N_FFT - 2 * HOP_LENGTH],
    ]
    return ops.concat(parts, axis=1)


def _leading(x: TensorValue, start: int, length: Dim) -> TensorValue:
    """``x[start : start + length]`` along axis 0, whose symbolic size MAX needs spelled out."""
    stop = ops.shape_to_tensor([length + start])
    return ops.slice_tensor(x, [(slice(start, stop), length)])


def log_mel(scope: Scope, x: TensorValue, n_mels: int) -> TensorValue:
    """(samples,) float32 waveform -> (n_mels, samples // HOP_LENGTH) log-mel, as whisper."""
    n_frames = x.shape[0] // HOP_LENGTH
    padded = ops.pad(x, [CENTER_PAD, CENTER_PAD], mode="reflect")
    spectrum = frames(padded, n_frames) @ scope.weight("dft_basis", [N_FFT, 2 * N_BINS])
    re = spectrum[:, :N_BINS]
    im = spectrum[:, N_BINS:]
    power = re * re + im * im
    mel = power @ scope.weight("mel_filters", [N_BINS, n_mels])
    log_spec = ops.log(ops.max(mel, 1e-10)) * (1 / math.log(10))
    if scope.variant.mel_log_clamp:
        peak = ops.max(ops.max(log_spec, axis=1), axis=0)
        log_spec = ops.max(log_spec, peak - 8.0)
    return ops.transpose((log_spec + 4.0) / 4.0, 0, 1)


class MaxLogMel:
    """``whisper.log_mel_spectrogram`` computed by MAX Engine; one compiled graph per n_mels."""

    def __init__(self, n_mels: int, engine: Engine, variant: Variant = FAITHFUL) -> None:
        if n_mels not in (80, 128):
            raise HarnessError(f"whisper has mel filters for 80 or 128 bands, not {n_mels}")
        self.n_mels, self.engine, self.variant = n_mels, engine, variant
        self._model: Model | None = None

    @property
    def graph_name(self) -> str:
        clamp = "clamp" if self.variant.mel_log_clamp else "noclamp"
        return f"whisper_log_mel_m{self.n_mels}_float32_{clamp}"

    def __call__(self, audio: np.ndarray, padding: int = 0) -> np.ndarray:
        """(samples,) waveform at 16 kHz -> (n_mels, (samples + padding) // 160) float32."""
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise HarnessError(f"expected a mono waveform (samples,), got shape {samples.shape}")
        if padding > 0:
            samples = np.pad(samples, (0, padding))
        if samples.size <= CENTER_PAD:
            # torch.stft refuses too: reflect padding needs more samples than it pads.
            raise HarnessError(f"log-mel needs more than {CENTER_PAD} samples, got {samples.size}")
        output = self.model.execute(self.engine.to_device(samples))[0]
        return to_numpy(output)

    @property
    def model(self) -> Model:
        if self._model is None:
            self._model = self.engine.bind(*self.binding())
        return self._model

    def binding(self) -> tuple[str, dict[str, HostArray]]:
        """The graph's name, compiled, and its weights (see ``BoundGraphs.binding``)."""
        self.engine.compile_together([self.spec])
        filters = np.ascontiguousarray(mel_filters(self.n_mels).T)
        return self.graph_name, {"dft_basis": dft_basis(), "mel_filters": filters}

    def adopt(self, model: Model) -> None:
        self._model = model

    @property
    def spec(self) -> GraphSpec:
        recipe = json.dumps([self.graph_name, source_digest()])
        return GraphSpec(self.graph_name, "mel", self._graph, recipe)

    def _graph(self, module: Module) -> Graph:
        device = self.engine.device_ref
        scope = Scope.of("mel", DType.float32, device, self.variant)
        input_type = TensorType(DType.float32, ["samples"], device)
        with Graph(self.graph_name, input_types=[input_type], module=module) as graph:
            graph.output(log_mel(scope, graph.inputs[0].tensor, self.n_mels))
        return graph
