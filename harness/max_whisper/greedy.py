"""Greedy decoding at temperature 0 with each token's choice made in MAX, not in PyTorch.

``whisper.transcribe`` decodes greedily first. Per token, openai-whisper's ``DecodingTask`` then
runs its logit filters (``SuppressBlank``, ``SuppressTokens``, ``ApplyTimestampRules``) and
``GreedyDecoder.update`` as a dozen PyTorch ops over the whole vocabulary. Beside MAX's worker
threads, which keep spinning after each step, that glue took ~2.2 ms a token on tiny.en (0.8 ms
in a process without MAX), a fifth of the decoding loop. Here one small graph (``selection``)
applies the same filters and picks the token and its log-probability; Python only turns the
token history into the filters' index ranges (``GreedyRules.bounds``), as openai-whisper does.

The rules mirror openai-whisper's own code, ``whisper/decoding.py``, filter by filter; the tests
compare both on the same logits, and whole transcripts through both loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from max.dtype import DType
from max.graph import DeviceRef, TensorValue, ops
from whisper.decoding import (
    ApplyTimestampRules,
    DecodingTask,
    GreedyDecoder,
    SuppressBlank,
    SuppressTokens,
)

from harness.max_whisper.engine import to_numpy

if TYPE_CHECKING:
    from harness.max_whisper.text_decoder import MaxTextDecoder

NO_RANGE = (0, 0)  # an empty [lo, hi): pads every row's ranges to the same count


def selection(
    logits: TensorValue,
    suppress: TensorValue,
    bounds: TensorValue,
    timestamp_begin: TensorValue,
    device: DeviceRef,
) -> list[TensorValue]:
    """The next token (batch,) int64 and its log-probability (batch,) float32, from the last
    position of ``logits`` (batch, rows, vocab), as openai-whisper's filters and greedy decoder.

    ``suppress`` (vocab,) is added to every row: 0, or -inf for the tokens always suppressed.
    ``bounds`` (batch, ranges, 2) holds each row's [lo, hi) token ranges suppressed at this
    step. Then ``ApplyTimestampRules``' last rule: where the timestamps' total probability
    (tokens from ``timestamp_begin`` on) beats the likeliest text token, text is suppressed.
    Its log-sum-exp is ``log(sum(exp(logprobs)))``: unshifted, it can underflow only where the
    timestamps' mass is below e^-87, which the likeliest of the text tokens beats anyway.
    """
    x = logits[:, -1, :]  # (batch, vocab)
    vocab = x.shape[-1]
    index = ops.range(0, int(vocab), 1, vocab, dtype=DType.int64, device=device)
    lo, hi = bounds[:, :, 0:1], bounds[:, :, 1:2]  # (batch, ranges, 1)
    inside = ops.logical_and(index >= lo, index < hi)  # (batch, ranges, vocab)
    blocked = ops.squeeze(ops.max(ops.cast(inside, DType.float32), axis=1), 1) > 0
    minus_inf = ops.constant(float("-inf"), DType.float32, device)
    zero = ops.constant(0.0, DType.float32, device)
    x = ops.where(blocked, minus_inf, x + suppress)
    is_timestamp = index >= timestamp_begin.to(device)  # (vocab,); the scalar comes on the host
    logprobs = ops.logsoftmax(x, axis=-1)
    timestamps = ops.log(ops.sum(ops.where(is_timestamp, ops.exp(logprobs), zero), axis=-1))
    best_text = ops.max(ops.where(is_timestamp, minus_inf, logprobs), axis=-1)  # (batch, 1)
    text_off = ops.logical_and(timestamps > best_text, ops.logical_not(is_timestamp))
    x = ops.where(text_off, minus_inf, x)
    token = ops.squeeze(ops.argmax(x, axis=-1), -1)
    # log_softmax is monotonic, so the chosen token's log-probability is the row's largest
    logprob = ops.squeeze(ops.max(ops.logsoftmax(x, axis=-1), axis=-1), -1)
    return [token, logprob]


@dataclass(frozen=True)
class GreedyRules:
    """One ``DecodingTask``'s logit filters as ``selection``'s inputs.

    ``suppress``: 0, or -inf for ``SuppressTokens``' list and, with timestamps, the
    no-timestamps token. ``blank``: ``SuppressBlank``'s tokens, suppressed at the first sampled
    position. ``timestamps``: the task's ``ApplyTimestampRules``, if timestamps are on.
    """

    suppress: np.ndarray
    blank: tuple[int, ...]
    sample_begin: int
    timestamps: ApplyTimestampRules | None

    @classmethod
    def of(cls, task: DecodingTask, vocab: int) -> GreedyRules | None:
        """The task's rules, or None where its decoding is not greedy at temperature 0 with
        only openai-whisper's three filters (beam search, sampling): that runs as it is."""
        decoder = task.decoder
        if not (isinstance(decoder, GreedyDecoder) and decoder.temperature == 0):
            return None
        filters = {type(f): f for f in task.logit_filters}
        known = (SuppressBlank, SuppressTokens, ApplyTimestampRules)
        if len(filters) != len(task.logit_filters) or not set(filters) <= set(known):
            return None
        # ApplyTimestampRules reads the logits the other filters left: it must come last
        if (
            ApplyTimestampRules in filters
            and type(task.logit_filters[-1]) is not ApplyTimestampRules
        ):
            return None
        suppress = np.zeros(vocab, dtype=np.float32)
        if SuppressTokens in filters:
            suppress[filters[SuppressTokens].suppress_tokens] = -np.inf
        timestamps = filters.get(ApplyTimestampRules)
        if timestamps is not None and task.tokenizer.no_timestamps is not None:
            suppress[task.tokenizer.no_timestamps] = -np.inf
        blank = ()
        if SuppressBlank in filters:
            blank = (*task.tokenizer.encode(" "), task.tokenizer.eot)
        return cls(suppress, blank, task.sample_begin, timestamps)

    def timestamp_begin(self, vocab: int) -> int:
        """Where the timestamp tokens start; ``vocab`` (none) when timestamps are off."""
        return vocab if self.timestamps is None else self.timestamps.tokenizer.timestamp_begin

    def bounds(self, sequences: Sequence[Sequence[int]], vocab: int) -> np.ndarray:
        """(batch, ranges, 2) int64: each row's token ranges [lo, hi) suppressed this step."""
        rows = [self._ranges(s, vocab) for s in sequences]
        width = max(len(r) for r in rows)
        return np.array([r + [NO_RANGE] * (width - len(r)) for r in rows], dtype=np.int64)

    def _ranges(self, sequence: Sequence[int], vocab: int) -> list[tuple[int, int]]:
        """``SuppressBlank`` and ``ApplyTimestampRules`` for one row, their masks as ranges."""
        sampled = sequence[self.sample_begin :]
        at_begin = not sampled
        ranges = [NO_RANGE] + ([(t, t + 1) for t in self.blank] if at_begin else [])
        if self.timestamps is None:
            return ranges
        tokenizer = self.timestamps.tokenizer
        begin = tokenizer.timestamp_begin
        last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= begin
        penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
        if last_was_timestamp:
            pair = (begin, vocab) if penultimate_was_timestamp else (0, tokenizer.eot)
            ranges.append(pair)
        stamps = [t for t in sampled if t >= begin]
        if stamps:
            last = (
                stamps[-1]
                if last_was_timestamp and not penultimate_was_timestamp
                else stamps[-1] + 1
            )
            ranges.append((begin, last))
        if at_begin:
            ranges.append((0, begin))
            initial = self.timestamps.max_initial_timestamp_index
            if initial is not None:
                ranges.append((begin + initial + 1, vocab))
        return ranges


def main_loop(
    task: DecodingTask,
    decoder: MaxTextDecoder,
    rules: GreedyRules,
    audio_features: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """``DecodingTask._main_loop`` for greedy decoding: the same results, each token's filters
    and choice in MAX (``MaxTextDecoder.select``), the logits never leaving MAX between steps.

    The prompt's step computes the logits at ``sot_index`` too, for the no-speech probability.
    """
    vocab = decoder.dims.n_vocab
    eot = task.tokenizer.eot
    sequences = tokens.tolist()
    sum_logprobs = np.zeros(len(sequences), dtype=np.float32)  # float32, as openai-whisper's
    no_speech_probs = [np.nan] * len(sequences)
    features = audio_features.numpy()
    suppress = decoder.engine.to_device(rules.suppress)
    begin = rules.timestamp_begin(vocab)
    decoder.reset()
    try:
        logits = decoder.step(tokens.numpy(), features, [task.sot_index, tokens.shape[1] - 1])
        if task.tokenizer.no_speech is not None:
            at_sot = torch.from_numpy(to_numpy(logits)[:, 0]).softmax(dim=-1)
            no_speech_probs = at_sot[:, task.tokenizer.no_speech].tolist()
        for i in range(task.sample_len):
            if i:
                logits = decoder.step(np.array([[s[-1]] for s in sequences]), features)
            chosen, logprobs = decoder.select(
                logits, suppress, rules.bounds(sequences, vocab), begin
            )
            ended = np.array([s[-1] == eot for s in sequences])
            sum_logprobs += np.where(ended, np.float32(0), logprobs)
            chosen[ended] = eot
            for sequence, token in zip(sequences, chosen.tolist(), strict=True):
                sequence.append(token)
            if all(s[-1] == eot for s in sequences) or len(sequences[0]) > task.n_ctx:
                break
    finally:
        decoder.reset()
    return torch.tensor(sequences), torch.from_numpy(sum_logprobs), no_speech_probs
