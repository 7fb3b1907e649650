"""``repro.py``'s text: template sections for one kind of graph, the case's constants baked in.

The templates (``templates/``) are plain ``max.graph.ops`` code split into ``# %% name``
sections: ``helpers`` (linear, layer norm, attention ...), ``stages`` (one ``stage`` function per
kind of graph) and ``main`` (compile, run, metrics, exit status). A script holds only the sections
its kind reads, and every switch of the variant as a named constant, so a planted fault's maths is
written out where the harness is not there to supply it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from dataclasses import fields
from functools import cache
from pathlib import Path
from string import Template
from types import ModuleType
from typing import Any

from harness.faults.graph_errors import MaxGraphError, max_graph_errors
from harness.max_whisper.variant import FAITHFUL, Variant

TEMPLATES = Path(__file__).parent / "templates"
IMPORTS = """\
import json
import math
import re
import sys
import time
from pathlib import Path
from string import Template

import numpy as np
from max.driver import CPU
from max.dtype import DType
from max.engine import InferenceSession, Model
from max.graph import DeviceRef, Dim, Graph, TensorType, TensorValue, Weight, ops
"""
ATTENTION = ("N_HEAD", "ATTENTION_SCALE_POWER", "SOFTMAX_OVER_QUERIES", "FUSED_MASKED_ATTENTION")
PROJECTED = (*ATTENTION, "HEADS_TRANSPOSED", "KEY_BIAS")
BLOCK_HELPERS = ("linear", "layer_norm", "mlp", "attention", "core", "self_attention")
# kind: (helper sections, constants) besides ``weight`` and the common constants
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mel": ((), ("N_MELS", "MEL_LOG_CLAMP")),
    "conv1": (("conv1d",), ("PREFIX", "N_STATE", "GELU_APPROXIMATE")),
    "conv2": (
        ("conv1d",),
        ("PREFIX", "N_STATE", "N_CTX", "GELU_APPROXIMATE", "CONV2_PADDING", "POSITIONAL_SHIFT"),
    ),
    "encoder_block": (
        BLOCK_HELPERS,
        ("PREFIX", *PROJECTED, "LAYER_NORM_EPS", "GELU_APPROXIMATE", "MLP_RESIDUAL"),
    ),
    "ln_post": (("layer_norm",), ("PREFIX", "LAYER_NORM_EPS", "LN_POST")),
    "embed": ((), ("PREFIX", "N_STATE", "N_VOCAB", "N_TEXT_CTX")),
    "decoder_block": (
        (*BLOCK_HELPERS, "causal_mask", "cross_attention"),
        ("PREFIX", "CROSS_KV", *PROJECTED, "CAUSAL_MASK", "LAYER_NORM_EPS", "GELU_APPROXIMATE"),
    ),
    "ln": (("layer_norm",), ("PREFIX", "LAYER_NORM_EPS")),
    "logits": ((), ("PREFIX", "N_STATE", "N_VOCAB")),
    "sub_layer_norm": (("layer_norm",), ("PREFIX", "LAYER_NORM_EPS")),
    "sub_mlp": (("linear", "mlp"), ("PREFIX", "GELU_APPROXIMATE")),
    "sub_attn": (
        ("linear", "attention", "core", "causal_mask", "self_attention"),
        ("PREFIX", "MASKED", *PROJECTED, "CAUSAL_MASK"),
    ),
    "sub_cross_attn": (
        ("linear", "attention", "core", "cross_attention"),
        ("PREFIX", "CROSS_KV", *PROJECTED),
    ),
    "sub_core": (("core", "causal_mask"), ("MASKED", *ATTENTION[1:], "CAUSAL_MASK")),
}
COMMON = ("GRAPH_NAME", "NPZ", "INPUTS", "LIMITS", "REPORTED")


@cache
def sections(template: str) -> dict[str, str]:
    """A template file's ``# %% name`` sections, by name."""
    text = (TEMPLATES / f"{template}.py.tmpl").read_text()
    parts = re.split(r"^# %% (\w+)\n", text, flags=re.MULTILINE)
    bodies = (body.strip("\n") + "\n" for body in parts[2::2])  # indentation kept
    return dict(zip(parts[1::2], bodies, strict=True))


def variant_constants(variant: Variant) -> dict[str, Any]:
    """Every switch of ``variant`` as a constant name (``LAYER_NORM_EPS``) and its value."""
    return {f.name.upper(): getattr(variant, f.name) for f in fields(Variant)}


def literal(value: Any) -> str:
    """``repr`` as Python source, infinite and NaN floats included (the SNR of equal outputs)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple | list):
        items = ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "")
        return f"({items})" if isinstance(value, tuple) else f"[{items}]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, as ruff format writes them
    return repr(value)


def assignment(name: str, value: Any) -> str:
    """``NAME = value``; a dict too long for one line gets a line per entry."""
    line = f"{name} = {literal(value)}"
    if len(line) <= 99 or not isinstance(value, dict):
        return line
    entries = "".join(f"    {literal(k)}: {literal(v)},\n" for k, v in value.items())
    return f"{name} = {{\n{entries}}}"


def constant_lines(kind: str, values: dict[str, Any], variant: Variant) -> list[str]:
    """``NAME = value`` for each constant the kind reads; a planted fault says whisper's value."""
    faithful = variant_constants(FAITHFUL)
    lines = []
    for name in dict.fromkeys([*KINDS[kind][1], *COMMON]):
        value = values[name]
        note = ""
        if name in faithful and value != faithful[name]:
            note = f"  # planted fault; whisper: {faithful[name]!r}"
        lines.append(assignment(name, value) + note)
    return lines


def render(kind: str, header: str, values: dict[str, Any], variant: Variant) -> str:
    """The whole script: docstring ``header``, imports, constants, helpers, ``stage``, main."""
    if kind == "sub_core":
        return render_core(header, values, variant)
    helpers = sections("helpers")
    body = [helpers["weight"], *(helpers[name] for name in KINDS[kind][0])]
    parts = [
        f'"""{header.strip()}\n"""\n',
        IMPORTS,
        "DEVICE = DeviceRef.CPU()\n" + "\n".join(constant_lines(kind, values, variant)) + "\n",
        *body,
        sections("stages")[kind],
        *sections("main").values(),
    ]
    return "\n\n".join(part.rstrip("\n") + "\n" for part in parts)


def render_core(header: str, values: dict[str, Any], variant: Variant) -> str:
    """The attention core alone (no weights): a script of a few dozen lines, its softmax in the
    one form the variant builds (``core.py.tmpl``; ``helpers`` ``core`` has every form)."""
    parts = sections("core")
    masked, fused = values["MASKED"], variant.fused_masked_attention
    body = ("fused" if fused else "spelled") if masked else "plain"
    if not masked and variant.softmax_over_queries:
        body = "over_queries"
    head_dim = values["INPUTS"]["q"][1][-1]
    constants = {"SCALE": 1.0 / math.pow(head_dim, variant.attention_scale_power)}
    if body == "spelled":
        constants["AXIS"] = -2 if variant.softmax_over_queries else -1
    if masked:
        constants["CAUSAL_MASK"] = variant.causal_mask
    constants["LIMIT"] = values["LIMITS"]["rel_l2"][0]
    constants |= {name: values[name] for name in ("GRAPH_NAME", "INPUTS")}
    lines = [assignment(name, value) for name, value in constants.items()]
    script = Template(parts["script"]).substitute(
        constants="\n".join(lines), attention=parts[body].rstrip("\n")
    )
    mask = "\n\n" + parts["mask"] if masked else ""
    before, after = script.split("\n\ndef build()", 1)
    return f'"""{header.strip()}\n"""\n\n{before}{mask}\n\ndef build(){after}'


def load_script(path: Path) -> ModuleType:
    """Import a written ``repro.py`` as a module (without running ``main``): the weights its
    graph declares, and its compile and execute for the minimiser."""
    spec = importlib.util.spec_from_file_location(f"repro_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared_weights(module: ModuleType) -> list[str]:
    """The names of the weights the script's graph declares (openai-whisper's names).

    A graph MAX refuses to build (``conv2_padding_0`` does) declares those read before the
    refusal: the script reproduces the refusal itself when run.
    """
    try:
        with max_graph_errors():
            module.build()
    except MaxGraphError:
        pass
    return list(getattr(module, "DECLARED", {}))  # the attention core declares none
