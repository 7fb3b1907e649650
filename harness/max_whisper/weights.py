"""The one place where openai-whisper's state dict becomes MAX's weight layout.

MAX graphs declare weights under openai-whisper's own names; only the layout differs:
``nn.Linear`` weights are stored pre-transposed to (in, out) because transposing a runtime
weight inside the graph is slow, and ``nn.Conv1d`` weights (out, in, k) become RSCF
(1, k, in, out), which the encoder reads as the (k·in, out) matrix of its im2col product.
Everything else (layer norms, biases, embeddings) is used as is.

A name with an encoding suffix (``token_embedding.weight.q4_0``, ``mlp.0.weight.float16``) is a
decoding step's copy of that matrix in (n_out, n_in) layout, stored in that encoding
(``quantized.py``), derived here from the checkpoint's float tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from max.dtype import DType

from harness.max_whisper import quantized
from harness.max_whisper.host_arrays import HostArray, host_array
from harness.max_whisper.variant import Variant

if TYPE_CHECKING:
    from harness.openai_whisper import ModelDimensions

# A state dict's values: NumPy arrays, or torch tensors (read through ``np.asarray``)
StateDict = Mapping[str, Any]

LINEAR_WEIGHT = re.compile(r"(^|\.)(query|key|value|out|mlp\.0|mlp\.2)\.weight$")
CONV_WEIGHT = re.compile(r"(^|\.)conv[12]\.weight$")
CROSS_KV = ("cross_attn.key.weight", "cross_attn.value.weight", "cross_attn.value.bias")


def to_max_layout(name: str, tensor: Any, few_rows: bool = False) -> np.ndarray:
    """The array a MAX graph expects for state-dict entry ``name`` (``few_rows``: a graph whose
    linear layers keep PyTorch's (out, in) layout, see ``layers.linear``), as a view."""
    array = np.asarray(tensor)
    if LINEAR_WEIGHT.search(name):
        return array if few_rows else array.T
    if CONV_WEIGHT.search(name):
        return array.transpose(2, 1, 0)[None]  # (out, in, k) -> (1, k, in, out)
    return array


def fault_remapped(state_dict: StateDict, variant: Variant, dims: ModelDimensions) -> StateDict:
    """The state dict as a variant's graphs read it: the faults that are a matter of which weight
    goes where live here, as renames, so the graph builders never see them.

    ``positional_shift``: the encoder's positional embedding rolled by that many frames.
    ``cross_kv_from_block``: block i's cross-attention keys and values are block i+offset's.
    The faithful variant gets ``state_dict`` itself.
    """
    if not (variant.positional_shift or variant.cross_kv_from_block):
        return state_dict
    remapped = dict(state_dict)
    if variant.positional_shift:
        name = "encoder.positional_embedding"
        remapped[name] = np.roll(np.asarray(state_dict[name]), -variant.positional_shift, axis=0)
    n_layer = dims.n_text_layer
    for i in range(n_layer) if variant.cross_kv_from_block else ():
        source = (i + variant.cross_kv_from_block) % n_layer
        for name in CROSS_KV:
            remapped[f"decoder.blocks.{i}.{name}"] = state_dict[f"decoder.blocks.{source}.{name}"]
    return remapped


def registry(
    state_dict: StateDict,
    prefix: str,
    names: Iterable[str],
    dtype: DType,
    few_rows: bool = False,
    state_id: str | None = None,
) -> dict[str, HostArray]:
    """Weights for a graph that declared ``names`` relative to the module at ``prefix``.
    ``state_id``: what stands for ``state_dict``'s values (``BoundGraphs.state_id``).

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
            known_as = f"{state_id}/{key}" if state_id else None
            weights[name] = quantized.layout(tensor, stored.group(2), known_as)
        else:
            weights[name] = host_array(to_max_layout(key, state_dict[key], few_rows), dtype)
    return weights
