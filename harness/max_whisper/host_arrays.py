"""What MAX's weights registry is given here: host arrays, NumPy's wherever NumPy has the type.

The MAX model imports no PyTorch: a transcription on MAX spends the ~1 s PyTorch takes to import
(openai-whisper's decoding needs it) encoding its first window instead (``harness.cli``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from max.dtype import DType

# A NumPy array, or for bfloat16 a torch tensor (``host_array``)
HostArray = Any


def host_array(array: Any, dtype: DType) -> HostArray:
    """``array`` (a NumPy array, or anything ``np.asarray`` reads: a CPU torch tensor) as a
    contiguous host array of ``dtype``, as a weights registry takes it.

    NumPy has no bfloat16, so a bfloat16 array is a torch tensor: the one use of PyTorch in the
    MAX model, imported here on first use, so a float32 model never imports it (its ~1 s is
    what a MAX transcription spends encoding instead, ``harness.cli``).
    """
    if dtype != DType.bfloat16:
        return np.ascontiguousarray(array, dtype=dtype.to_numpy())
    import torch  # noqa: PLC0415 - see above

    if not isinstance(array, torch.Tensor):
        array = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return array.to(torch.bfloat16).contiguous()
