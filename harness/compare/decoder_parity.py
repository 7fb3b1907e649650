"""Decoder parity, teacher-forced: both sides read the same true token sequence.

Greedy decoding of a random-weight model tends to repeat one token, which tests little, so the
decoder is fed the standard prompt followed by a real sentence's tokens. Stages are compared
isolated and chained over the whole sequence; the logits of MAX's KV-cached incremental path are
compared step by step with PyTorch's, with the softmax KL and the reference's top-2 gap, so a
flip at a near-tie is told apart from a real error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import whisper
from scipy.special import log_softmax

from harness.compare.metrics import compare
from harness.compare.stage_walk import arbiter_for, compare_stages, first_divergent
from harness.compare.tolerances import Tolerances
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.progress import Notify, silent
from harness.reference import tracer
from harness.reference.noise_floor import Float64Reference

MIN_STEPS = 32


def tokenizer(checkpoint: Checkpoint) -> whisper.tokenizer.Tokenizer:
    """openai-whisper's tokenizer for English transcription with this checkpoint's vocabulary."""
    model = checkpoint.model
    return whisper.tokenizer.get_tokenizer(
        model.is_multilingual, num_languages=model.num_languages, language="en", task="transcribe"
    )


def prompt_length(checkpoint: Checkpoint) -> int:
    """Tokens before the text: 4 for a multilingual model, 2 for an English-only one."""
    return len(tokenizer(checkpoint).sot_sequence_including_notimestamps)


def teacher_tokens(checkpoint: Checkpoint, text: str) -> np.ndarray:
    """(1, n) tokens: ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`` + text."""
    encoding = tokenizer(checkpoint)
    tokens = [*encoding.sot_sequence_including_notimestamps, *encoding.encode(" " + text.strip())]
    return np.array([tokens[: checkpoint.dims.n_text_ctx]], dtype=np.int64)


def decoder_parity(
    checkpoint: Checkpoint,
    candidate: MaxTextDecoder,
    audio_features: np.ndarray,
    tokens: np.ndarray,
    tolerances: Tolerances,
    progress: Notify = silent,
    float64: Float64Reference | None = None,
) -> dict[str, Any]:
    """The ``decoder.teacher_forced`` section of parity.json; ``float64`` (with these
    ``audio_features``) adds each stage's arbiter verdict and records its noise floor."""
    reference = tracer.trace_decoder(checkpoint.model.decoder, tokens, audio_features)
    stages, chained = compare_stages(
        candidate.stages(),
        lambda stage, x: candidate.run_stage(stage, x, audio_features),
        reference,
        "tokens",
        progress,
        arbiter_for(float64, tolerances),
    )
    progress("decoder: KV-cached steps")
    cached = incremental_logits(candidate, tokens, audio_features, prompt_length(checkpoint))
    per_step = step_metrics(cached, reference["logits"])
    return {
        **step_summary(per_step),
        "min_top2_gap": min(s["top2_gap"] for s in per_step),
        "cached_vs_full": compare(cached, chained["logits"]),
        "first_divergent_stage": first_divergent(stages, tolerances),
        "per_step": per_step,
        "stages": stages,
    }


def incremental_logits(
    candidate: MaxTextDecoder, tokens: np.ndarray, audio_features: np.ndarray, prompt: int
) -> np.ndarray:
    """MAX's logits as decoding computes them: the prompt at once, then one token per step."""
    candidate.reset()
    logits = [candidate.logits(tokens[:, :prompt], audio_features)]
    for i in range(prompt, tokens.shape[1]):
        logits.append(candidate.logits(tokens[:, i : i + 1], audio_features))
    candidate.reset()
    return np.concatenate(logits, axis=1)


def step_summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Over teacher-forced steps: how many, the share with the same argmax, the worst KL and
    the largest logit difference."""
    return {
        "steps": len(steps),
        "top1_agreement": float(np.mean([s["top1_match"] for s in steps])),
        "max_kl": max(s["kl"] for s in steps),
        "max_abs_logit": max(s["max_abs"] for s in steps),
    }


def step_metrics(candidate: np.ndarray, reference: np.ndarray) -> list[dict[str, Any]]:
    """Per position of batch item 0: logit metrics, KL(torch || max), top-1 match, top-2 gap."""
    steps = []
    for step in range(reference.shape[1]):
        a, b = candidate[0, step].astype(np.float64), reference[0, step].astype(np.float64)
        log_p, log_q = log_softmax(b), log_softmax(a)
        top2 = np.sort(b)[-2:]
        metrics = compare(a[None], b[None])
        steps.append(
            {
                "step": step,
                "kl": float(max(0.0, np.sum(np.exp(log_p) * (log_p - log_q)))),
                "top1_match": bool(a.argmax() == b.argmax()),
                "top2_gap": float(top2[1] - top2[0]),
                "rel_l2": metrics["rel_l2"],
                "cosine": metrics["cosine"],
                "max_abs": metrics["max_abs"],
            }
        )
    return steps
