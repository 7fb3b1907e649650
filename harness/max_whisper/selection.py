"""The graph that picks each greedy token in MAX: openai-whisper's logit filters and choice.

``greedy.py`` turns a ``DecodingTask``'s filters into this graph's inputs and runs the loop;
the graph itself is part of the text decoder's transcription unit (``text_decoder.py``).
"""

from __future__ import annotations

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, ops

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
