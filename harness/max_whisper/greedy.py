"""Greedy decoding at temperature 0 with each token's choice made in MAX, not in PyTorch.

``whisper.transcribe`` decodes greedily first. Per token, openai-whisper's ``DecodingTask`` then
runs its logit filters (``SuppressBlank``, ``SuppressTokens``, ``ApplyTimestampRules``) and
``GreedyDecoder.update`` as a dozen PyTorch ops over the whole vocabulary. Beside MAX's worker
threads, which keep spinning after each step, that glue took ~2.2 ms a token on tiny.en (0.8 ms
in a process without MAX), a fifth of the decoding loop. Here one small graph (``selection``)
applies the same filters and picks the token and its log-probability; Python only turns the
token history into the filters' index ranges (``GreedyRules.bounds``), as openai-whisper does.
The graph is built in ``selection.py``, which imports no PyTorch, like the rest of the model.

The rules mirror openai-whisper's own code, ``whisper/decoding.py``, filter by filter; the tests
compare both on the same logits, and whole transcripts through both loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from whisper.decoding import (
    ApplyTimestampRules,
    DecodingTask,
    GreedyDecoder,
    SuppressBlank,
    SuppressTokens,
)

from harness.max_whisper.engine import to_numpy
from harness.max_whisper.selection import NO_RANGE

if TYPE_CHECKING:
    from harness.max_whisper.text_decoder import MaxTextDecoder


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
