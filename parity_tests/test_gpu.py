"""The GPU path: MAX on the accelerator against PyTorch's float32 reference.

Without an accelerator (CI, and every machine of this project but the lent H200) the parity tests
skip, and asking for ``--device gpu`` is a one-line error.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from max.driver import accelerator_count

from harness.compare import tolerances
from harness.compare.metrics import compare
from harness.inputs.audio import load_audio
from harness.max_whisper.engine import DTYPES, Engine
from harness.max_whisper.whisper import MaxWhisper
from harness.paths import REPO
from harness.reference import tracer
from harness.report.build import DEFAULT_AUDIO

HAS_GPU = accelerator_count() > 0
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="MAX sees no accelerator on this machine")


@pytest.mark.skipif(HAS_GPU, reason="this machine has an accelerator")
def test_asking_for_a_gpu_without_one_is_a_one_line_error():
    command = [sys.executable, "-m", "harness", "transcribe", str(DEFAULT_AUDIO), "--device", "gpu"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --device gpu: MAX sees no accelerator on this machine"


@pytest.fixture(scope="module")
def window_mel(load_checkpoint) -> np.ndarray:
    checkpoint = load_checkpoint("synthetic:tiny")
    return tracer.window_mel(load_audio(DEFAULT_AUDIO), checkpoint.dims.n_mels)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_encoder_and_first_logits_match_pytorch(load_checkpoint, window_mel, dtype):
    checkpoint = load_checkpoint("synthetic:tiny")
    candidate = MaxWhisper(checkpoint, Engine("gpu", DTYPES[dtype]))
    limits = tolerances.load(dtype, "gpu")  # float32: TF32 tensor cores (tolerances.json)
    with torch.no_grad():
        features = checkpoint.model.encoder(torch.from_numpy(window_mel))
        prompt = torch.tensor([[50258, 50259, 50359, 50363]])
        logits = checkpoint.model.logits(prompt, features).numpy()
    max_features = candidate.encoder(torch.from_numpy(window_mel)).numpy()
    assert not limits.violations(compare(max_features[0], features[0].numpy()), "fused")
    max_logits = candidate.logits(prompt, features).numpy()
    assert not limits.violations(compare(max_logits[0], logits[0]), "fused")
