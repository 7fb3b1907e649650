"""Compiling and executing MAX graphs: compile once per shape, bind weights per checkpoint.

Compiling costs about a minute per graph on a 2-core CPU, so every compiled graph is kept by
name for the life of the process (MAX also caches compiled kernels on disk), and weights are
bound at ``init`` time: one compiled block graph serves every block of every checkpoint of
that shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from max.driver import CPU, Accelerator, Buffer, accelerator_count
from max.dtype import DType
from max.engine import CompiledModel, InferenceSession, Model
from max.graph import DeviceRef, Graph

from harness.errors import HarnessError

TORCH_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16}
DTYPES = {"float32": DType.float32, "bfloat16": DType.bfloat16}


@dataclass
class Engine:
    """One MAX inference session on one device, with its compiled graphs and compile times."""

    device: str = "cpu"
    dtype: DType = DType.float32
    session: InferenceSession = field(init=False)
    compiled: dict[str, CompiledModel] = field(default_factory=dict, init=False)
    compile_seconds: dict[str, float] = field(default_factory=dict, init=False)
    on_compile: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.device == "gpu":
            if accelerator_count() == 0:
                raise HarnessError("--device gpu: MAX sees no accelerator on this machine")
            self.session = InferenceSession(devices=[Accelerator()])
        else:
            self.session = InferenceSession(devices=[CPU()])

    @property
    def device_ref(self) -> DeviceRef:
        return DeviceRef.GPU() if self.device == "gpu" else DeviceRef.CPU()

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    def compile(self, build: Callable[[], Graph], name: str) -> CompiledModel:
        """Compile the graph ``build()`` returns, once per ``name`` (which encodes its shape)."""
        if name not in self.compiled:
            if self.on_compile:
                self.on_compile(name)
            start = time.perf_counter()
            self.compiled[name] = self.session.compile(build())
            self.compile_seconds[name] = time.perf_counter() - start
        return self.compiled[name]

    def init(self, compiled: CompiledModel, weights: Mapping[str, torch.Tensor]) -> Model:
        return self.session.init(compiled, weights_registry=dict(weights))

    def to_device(self, array: np.ndarray | torch.Tensor) -> Buffer:
        tensor = torch.as_tensor(array).contiguous()
        buffer = Buffer.from_dlpack(tensor)
        return buffer.to(self.session.devices[0]) if self.device == "gpu" else buffer


def to_numpy(buffer: Buffer) -> np.ndarray:
    """A float32 host copy of a graph output (graphs return float32 whatever their dtype)."""
    return buffer.to(CPU()).to_numpy() if not buffer.device.is_host else buffer.to_numpy()
