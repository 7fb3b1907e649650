"""Build-time switches of the MAX model: the faithful port, or one planted fault.

The default ``Variant()`` is openai-whisper's exact maths. The fault catalogue
(``harness/faults/catalogue.py``) builds graphs with one field changed, to prove the parity harness
catches and localises each kind of porting bug. PyTorch is never patched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    layer_norm_eps: float = 1e-5
    gelu_approximate: str = "none"  # "tanh" is a common porting slip
    attention_scale_power: float = 0.5  # scores * head_dim ** -power; 1.0 gives the 1/d bug
    ln_post: bool = True
    key_bias: bool = False  # whisper's key projection has no bias
    positional_shift: int = 0  # frames by which the encoder's positional embedding is rolled
    conv2_padding: int = 1
    heads_transposed: bool = True  # False: split heads by reshape alone, mixing ctx and heads
    causal_mask: bool = True
    cross_kv_from_block: int = 0  # offset: block i reads the cross K/V of block i+offset
    mel_log_clamp: bool = True
    softmax_over_queries: bool = False  # normalise each key's column, not each query's row
    mlp_residual: bool = True  # False: an encoder block returns its MLP's output, no residual
    # True: masked attention in the form MAX 26.7 fuses and drops the mask in (``MAX_BUGS``). Kept
    # out of repr so that every other variant's graph names, and their compiled caches, stay put.
    fused_masked_attention: bool = field(default=False, repr=False)

    def attention_scale(self, head_dim: int) -> float:
        return 1.0 / math.pow(head_dim, self.attention_scale_power)


FAITHFUL = Variant()
