"""The one place where openai-whisper's state dict becomes MAX's weight layout.

MAX graphs declare weights under openai-whisper's own names; only the layout differs:
``nn.Linear`` weights are stored pre-transposed to (in, out) because transposing a runtime
weight inside the graph is slow, and ``nn.Conv1d`` weights (out, in, k) become conv2d's RSCF
(1, k, in, out). Everything else (layer norms, biases, embeddings) is used as is.

A name with an encoding suffix (``token_embedding.weight.q4_0``, ``mlp.0.weight.float16``) is a
decoding step's copy of that matrix in (n_out, n_in) layout, stored in that encoding
(``quantized.py``), derived here from the checkpoint's float tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from harness.max_whisper import quantized

LINEAR_WEIGHT = re.compile(r"\.(query|key|value|out|mlp\.0|mlp\.2)\.weight$")
CONV_WEIGHT = re.compile(r"(^|\.)conv[12]\.weight$")


def to_max_layout(name: str, tensor: torch.Tensor, few_rows: bool = False) -> torch.Tensor:
    """The tensor a MAX graph expects for state-dict entry ``name`` (``few_rows``: a graph whose
    linear layers keep PyTorch's (out, in) layout, see ``layers.linear``)."""
    if LINEAR_WEIGHT.search(name):
        return tensor if few_rows else tensor.t()
    if CONV_WEIGHT.search(name):
        return tensor.permute(2, 1, 0).unsqueeze(0)  # (out, in, k) -> (1, k, in, out)
    return tensor


def registry(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str,
    names: Iterable[str],
    dtype: torch.dtype,
    few_rows: bool = False,
) -> dict[str, torch.Tensor]:
    """Weights for a graph that declared ``names`` relative to the module at ``prefix``.

    Raises KeyError naming the missing entry: a graph must never run on a made-up weight.
    """
    weights = {}
    for name in names:
        stored = quantized.SUFFIX.match(name)
        key = prefix + (stored.group(1) if stored else name)
        if key not in state_dict:
            raise KeyError(f"checkpoint has no tensor {key!r}")
        if stored:  # always (n_out, n_in): the few_rows layout
            tensor = to_max_layout(key, state_dict[key], few_rows=True)
            weights[name] = quantized.layout(tensor, stored.group(2))
        else:
            weights[name] = to_max_layout(key, state_dict[key], few_rows).to(dtype).contiguous()
    return weights
