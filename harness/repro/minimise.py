"""Below the sub-stage bisection: the smallest piece of a failing block, at its smallest shape.

The harness's bisection (``compare/bisect.py``) names the block's failing sub-module. Here its
inputs are shrunk while it still fails: for attention, first the attention core alone (q, k, v as
PyTorch projects them: the projections are then out of the picture), then fewer heads, then
fewer frames or tokens; batch is 1 already. Each candidate is judged by the very ``repro.py`` that
will be handed over, loaded as a module: its graph leaves heads and frames symbolic, so it is
compiled once, and PyTorch recomputes the expected output of each shrunk input with
openai-whisper's own module (float64 too, for the arbiter).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from whisper.model import MultiHeadAttention, ResidualAttentionBlock

from harness.compare.bisect import RESIDUAL, bisect
from harness.compare.metrics import compare
from harness.compare.tolerances import Tolerances
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.engine import Engine
from harness.max_whisper.substages import MaxSubStages
from harness.max_whisper.variant import Variant
from harness.reference.arbiter import float64_module
from harness.reference.tracer import trace_block
from harness.repro import folder
from harness.repro.case import Case, breaks, limits_for
from harness.repro.script import declared_weights, load_script, render
from harness.stages import Stage

Tensors = dict[str, torch.Tensor]
Call = Callable[[nn.Module | None, Tensors], torch.Tensor]


@dataclass(frozen=True)
class Piece:
    """A part of a block as a case at full size, PyTorch's way to compute it, and which axis of
    which input is its heads or its frames."""

    case: Case
    module: nn.Module | None  # openai-whisper's, or None for the attention core
    call: Call
    axes: dict[str, dict[str, int]]  # "head" / "ctx": {input name: axis}

    def sizes(self) -> dict[str, int]:
        return {
            axis: max(self.case.inputs[name].shape[i] for name, i in inputs.items())
            for axis, inputs in self.axes.items()
        }

    def shrunk(self, sizes: dict[str, int]) -> Case:
        """The case on the leading ``sizes`` of each axis, expected outputs recomputed."""
        inputs = dict(self.case.inputs)
        for axis, names in self.axes.items():
            for name, i in names.items():
                inputs[name] = np.ascontiguousarray(inputs[name].take(range(sizes[axis]), axis=i))
        expected = {
            "torch": self._reference(self.module, inputs, torch.float32),
            "float64": self._reference(
                self.module and float64_module(self.module), inputs, torch.float64
            ),
        }
        return replace(self.case, inputs=inputs, expected=expected)

    def _reference(self, module, inputs: dict[str, np.ndarray], dtype: torch.dtype) -> np.ndarray:
        tensors = {name: torch.from_numpy(a).to(dtype) for name, a in inputs.items()}
        with torch.no_grad():
            return self.call(module, tensors).numpy()


def causal(n: int, dtype: torch.dtype) -> torch.Tensor:
    """openai-whisper's decoder mask for ``n`` tokens: -inf above the diagonal."""
    return torch.empty(n, n, dtype=dtype).fill_(-np.inf).triu_(1)


def core_attention(masked: bool) -> Call:
    """openai-whisper's ``qkv_attention`` on (batch, head, ctx, head_dim) q, k, v."""

    def call(_module: nn.Module | None, t: Tensors) -> torch.Tensor:
        batch, n_head, n, head_dim = t["q"].shape
        merged = [x.permute(0, 2, 1, 3).flatten(start_dim=2) for x in (t["q"], t["k"], t["v"])]
        mask = causal(n, t["q"].dtype) if masked else None
        out, _ = MultiHeadAttention(n_head * head_dim, n_head).qkv_attention(*merged, mask)
        return out.view(batch, n, n_head, head_dim).permute(0, 2, 1, 3)

    return call


def split(x: torch.Tensor, n_head: int) -> np.ndarray:
    """(batch, ctx, state) -> (batch, head, ctx, head_dim), as openai-whisper splits heads."""
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3).contiguous().numpy()


def core_piece(base: Case, attn: MultiHeadAttention, x: np.ndarray, xa, masked: bool) -> Piece:
    """The attention core of ``attn`` on its input ``x`` (and the audio ``xa``, cross)."""
    with torch.no_grad():
        h = torch.from_numpy(x)
        source = h if xa is None else torch.from_numpy(xa)
        q, k, v = attn.query(h), attn.key(source), attn.value(source)
    inputs = {name: split(t, attn.n_head) for name, t in zip("qkv", (q, k, v), strict=True)}
    ctx = {"q": "ctx"} | ({"k": "ctx", "v": "ctx"} if masked else {"k": "keys", "v": "keys"})
    symbolic = {name: {0: "batch", 1: "head", 2: dim} for name, dim in ctx.items()}
    case = replace(
        base,
        kind="sub_core",
        inputs=inputs,
        symbolic=symbolic,
        constants=base.constants | {"MASKED": masked},
    )
    axes = {
        "head": {"q": 1, "k": 1, "v": 1},
        "ctx": {"q": 2} | ({"k": 2, "v": 2} if masked else {}),
    }
    return Piece(case, None, core_attention(masked), axes)


def module_call(sub_stage: str, masked: bool) -> Call:
    """How openai-whisper's sub-module (or the whole block, for ``residual``) is called."""

    def call(module: nn.Module | None, t: Tensors) -> torch.Tensor:
        x, xa = t["x"], t.get("xa")
        mask = causal(x.shape[1], x.dtype) if masked else None
        if sub_stage == RESIDUAL:
            return module(x, xa, mask=mask)
        if sub_stage in ("attn", "cross_attn"):
            return module(x, xa, mask=mask)[0]
        return module(x)

    return call


AXES = {"head": "heads", "ctx": "positions"}  # frames (encoder) or tokens (decoder)
SUB_KINDS = {"mlp": "sub_mlp", "attn": "sub_attn", "cross_attn": "sub_cross_attn"}


def sub_stage_piece(
    base: Case, stage: Stage, block: ResidualAttentionBlock, sub_stage: str, x, xa
) -> Piece:
    """The sub-module ``sub_stage`` of ``block`` on its input ``x`` (the whole block for
    ``residual``), frames or tokens symbolic."""
    masked = stage.side == "decoder" and sub_stage in ("attn", RESIDUAL)
    if sub_stage == RESIDUAL:
        kind, prefix, module = f"{stage.side}_block", stage.prefix, block
    else:
        kind = "sub_layer_norm" if sub_stage.endswith("ln") else SUB_KINDS[sub_stage]
        prefix, module = f"{stage.prefix}{sub_stage}", getattr(block, sub_stage)
    reads_audio = sub_stage == "cross_attn" or (sub_stage == RESIDUAL and stage.reads_audio)
    inputs = {"x": x} | ({"xa": xa} if reads_audio else {})
    case = replace(
        base,
        kind=kind,
        inputs=inputs,
        symbolic={"x": {0: "batch", 1: "ctx"}, "xa": {0: "batch"}},
        constants=base.constants | {"PREFIX": prefix, "MASKED": masked},
    )
    return Piece(case, module, module_call(sub_stage, masked), {"ctx": {"x": 1}})


def pieces(base: Case, stage: Stage, block, sub_stage: str, capture, x, xa) -> list[Piece]:
    """Smallest first: the attention core (for an attention sub-stage), then the sub-stage."""
    sub_input = x if sub_stage == RESIDUAL else capture[sub_stage][0]
    found = [sub_stage_piece(base, stage, block, sub_stage, sub_input, xa)]
    if sub_stage in ("attn", "cross_attn"):
        audio = xa if sub_stage == "cross_attn" else None
        masked = stage.side == "decoder" and sub_stage == "attn"
        found.insert(0, core_piece(base, getattr(block, sub_stage), sub_input, audio, masked))
    return found


class Judge:
    """Runs the graph of a piece's own ``repro.py`` (compiled once) on shrunk inputs: does it
    still break a limit?"""

    def __init__(self, piece: Piece) -> None:
        self.piece = piece
        self._folder = tempfile.TemporaryDirectory(prefix="repro-minimise-")
        path = Path(self._folder.name) / "repro.py"
        case = piece.case
        path.write_text(render(case.kind, "A candidate.", folder.values(case), case.variant))
        self.script = load_script(path)
        names = declared_weights(self.script)
        self.model = self.script.load(folder.weights_of(case, names))

    def fails(self, sizes: dict[str, int]) -> bool:
        case = self.piece.shrunk(sizes)
        inputs = (np.ascontiguousarray(case.inputs[name]) for name in self.script.INPUTS)
        output = self.model.execute(*inputs)[0].to_numpy()
        return bool(breaks(compare(output, case.expected["torch"]), case.limits))

    def close(self) -> None:
        self._folder.cleanup()


STEPS_DOWN = 8  # after halving stops, sizes tried one smaller (each a run, not a compile)


def smallest(fails: Callable[[dict[str, int]], bool], sizes: dict[str, int]) -> dict[str, int]:
    """Halve heads, then frames, while the piece still fails, then step each down by one a few
    times (a causal mask needs 2 tokens, halving 7 gives 3); the last sizes that failed."""
    for axis in ("head", "ctx"):
        for smaller, tries in ((lambda n: n // 2, None), (lambda n: n - 1, STEPS_DOWN)):
            while axis in sizes and sizes[axis] > 1 and tries != 0:
                trial = sizes | {axis: smaller(sizes[axis])}
                if not fails(trial):
                    break
                sizes, tries = trial, None if tries is None else tries - 1
    return sizes


@dataclass(frozen=True)
class Minimal:
    """The smallest failing piece found: which, at which sizes, from which full sizes."""

    sub_stage: str
    piece: str  # which piece: "attention core of sub-stage attn", "sub-stage mlp" ...
    full: dict[str, int]
    sizes: dict[str, int]
    case: Case

    def describe(self) -> str:
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in self.case.inputs.items())
        cut = ", ".join(f"{self.sizes[a]} of {self.full[a]} {AXES[a]}" for a in self.full)
        return f"{self.piece}: {shapes} ({cut}, batch 1)"


def piece_label(piece: Piece, sub_stage: str) -> str:
    if piece.module is None:
        return f"attention core of sub-stage {sub_stage}"
    if sub_stage == RESIDUAL:
        return "whole block (its sub-stages agree alone: the residual additions)"
    return f"sub-stage {sub_stage}"


def minimise(
    checkpoint: Checkpoint,
    engine: Engine,
    variant: Variant,
    stage: Stage,
    base: Case,
    limits: Tolerances,
) -> Minimal | None:
    """The smallest failing piece of the block ``stage`` whose isolated case is ``base``; None
    when no piece fails alone (nothing smaller than the stage reproduces)."""
    model = checkpoint.model
    block = (model.decoder if stage.side == "decoder" else model.encoder).blocks[stage.block]
    x, xa = base.inputs["x"], base.inputs.get("xa")
    mask = model.decoder.mask if stage.side == "decoder" else None
    capture = trace_block(block, x, xa, mask)
    candidate = MaxSubStages(checkpoint.dims, model.state_dict(), engine, variant)
    sub_stage, _ = bisect(candidate, stage, capture, xa, limits)
    limits_of_piece = limits_for("isolated")  # a piece is judged like any isolated stage
    base = replace(base, reported=None, reported_error=None, limits=limits_of_piece, notes=[])
    for piece in pieces(base, stage, block, sub_stage, capture, x, xa):
        judge = Judge(piece)
        try:
            full = piece.sizes()
            if judge.fails(full):
                sizes = smallest(judge.fails, full)
                label = piece_label(piece, sub_stage)
                return Minimal(sub_stage, label, full, sizes, piece.shrunk(sizes))
        finally:
            judge.close()
    return None
