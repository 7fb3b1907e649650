"""The float64 arbiter: when MAX and PyTorch disagree at a stage, which of them is right?

Both sides compute in float32, so a disagreement alone does not say who erred. The arbiter
recomputes the stage with openai-whisper's own modules copied to float64 (round-off ~1e-16, so
effectively exact), fed the same input, and reports each side's distance to it. A planted fault
leaves MAX far from float64 and PyTorch at its float32 round-off (~1e-7); a faithful stage leaves
both at round-off, and the verdict is a tie: which side is marginally closer is chance.

whisper's ``LayerNorm`` casts its input to float32 whatever its dtype, so in the float64 copy each
one computes as the ``nn.LayerNorm`` it subclasses (same weights, no cast). whisper's
``log_mel_spectrogram`` likewise builds its window and filters in float32; ``log_mel_float64`` is
its code line for line with both in float64.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Literal, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from whisper.audio import HOP_LENGTH, N_FFT, mel_filters
from whisper.model import LayerNorm, Whisper

from harness.compare.metrics import compare
from harness.stages import MEL, Stage, stage_named

StageFunction = Callable[..., torch.Tensor]


class Verdict(TypedDict):
    stage: str
    max_vs_f64_rel_l2: float
    torch_vs_f64_rel_l2: float
    closer: Literal["max", "reference", "tie"]


def arbitrate(
    model: Whisper,
    stage: str,
    inputs: Sequence[np.ndarray],
    max_output: np.ndarray,
    torch_output: np.ndarray,
    limit: float,
) -> Verdict:
    """Which of ``max_output`` and ``torch_output`` is closer to ``stage`` computed in float64.

    ``inputs`` are the stage's inputs as the parity runs feed them (see ``float64_stage``);
    ``limit`` is the stage's rel_l2 tolerance (see ``judge``).
    """
    exact = run_float64(float64_stage(model, stage), inputs)
    max_error = compare(max_output, exact)["rel_l2"]
    return judge(stage, max_error, compare(torch_output, exact)["rel_l2"], limit)


def judge(stage: str, max_error: float, torch_error: float, limit: float) -> Verdict:
    """The verdict from each side's rel_l2 to float64.

    A tie when both are within ``limit`` of exact maths (the tolerance that judges MAX against
    PyTorch, so no second threshold): both sides are at round-off and neither is wrong. Else the
    closer side; a NaN (a broken graph) is never closer.
    """
    if (max_error <= limit and torch_error <= limit) or max_error == torch_error:
        closer: Literal["max", "reference", "tie"] = "tie"
    else:
        closer = "max" if max_error < torch_error else "reference"
    return Verdict(
        stage=stage, max_vs_f64_rel_l2=max_error, torch_vs_f64_rel_l2=torch_error, closer=closer
    )


def run_float64(function: StageFunction, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Apply a ``float64_stage`` to NumPy inputs: floats become float64, token ids stay ints."""
    tensors = [
        torch.from_numpy(np.asarray(a, dtype=np.float64 if a.dtype.kind == "f" else np.int64))
        for a in inputs
    ]
    with torch.no_grad():
        return function(*tensors).numpy()


def float64_stage(model: Whisper, stage: str) -> StageFunction:
    """openai-whisper's computation of ``stage`` on float64 copies of the modules it uses.

    Stages and inputs are the tracer's: ``mel`` (audio samples; output (frames, n_mels)),
    ``conv1`` (mel), ``conv2``, ``blocks.i``, ``ln_post`` (the previous stage's activation),
    ``decoder.embed`` (tokens), ``decoder.blocks.i`` (activation, audio features), ``decoder.ln``
    and ``logits``. Only the modules of that stage are copied, not the whole model.
    """
    if stage == MEL:
        return lambda audio: log_mel_float64(audio, model.dims.n_mels).T
    return _float64_of(model, stage_named(model.dims, stage))


def _float64_of(model: Whisper, stage: Stage) -> StageFunction:
    encoder, decoder = model.encoder, model.decoder
    if stage.kind == "block" and stage.side == "encoder":
        return float64_module(encoder.blocks[stage.block])
    if stage.kind == "block":
        block, mask = float64_module(decoder.blocks[stage.block]), decoder.mask.double()
        return lambda x, xa: block(x, xa, mask=mask)
    builders: dict[str, Callable[[], StageFunction]] = {
        "conv1": lambda: _conv1(float64_module(encoder.conv1)),
        "conv2": lambda: _conv2(
            float64_module(encoder.conv2), encoder.positional_embedding.double()
        ),
        "ln_post": lambda: float64_module(encoder.ln_post),
        "embed": lambda: _embed(
            float64_module(decoder.token_embedding), decoder.positional_embedding.double()
        ),
        "ln": lambda: float64_module(decoder.ln),
        "logits": lambda: _logits(decoder.token_embedding.weight.double()),
    }
    return builders[stage.kind]()


def log_mel_float64(audio: torch.Tensor, n_mels: int) -> torch.Tensor:
    """``whisper.audio.log_mel_spectrogram`` with its window and mel filters in float64."""
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    log_spec = torch.clamp(mel_filters("cpu", n_mels).double() @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def float64_module(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` whose whisper ``LayerNorm``s really compute in float64."""
    copied = copy.deepcopy(module).double()
    for child in copied.modules():
        if isinstance(child, LayerNorm):
            child.__class__ = nn.LayerNorm
    return copied


def _conv1(conv: nn.Module) -> StageFunction:
    return lambda mel: F.gelu(conv(mel)).transpose(1, 2)


def _conv2(conv: nn.Module, positions: torch.Tensor) -> StageFunction:
    return lambda x: F.gelu(conv(x.transpose(1, 2))).transpose(1, 2) + positions


def _embed(embedding: nn.Module, positions: torch.Tensor) -> StageFunction:
    return lambda tokens: embedding(tokens) + positions[: tokens.shape[-1]]


def _logits(weight: torch.Tensor) -> StageFunction:
    return lambda x: x @ weight.T
