"""Every graph the planted faults may run, compiled before the first one runs.

Localising a fault compiles the graphs it changes, one by one (``localise.py``): a cold compile
each, ~60 s for a block on 2 cores, most of it kernels that every fault's block shares. Compiled
as one MAX module, they share them (``Engine.compile_together``). The faithful parts are
compiled first, as the rest of the harness compiles them (their store entries are shared), so
that a fault's graphs that it leaves alone are bound through the faithful ones.

Nothing here decides a finding. A graph MAX refuses to build is left out, and if MAX refuses
the module, it is given up: either way the graph is compiled alone when its stage runs, and
the refusal is a finding there (``graph_errors.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from max.graph import Module

from harness.faults.graph_errors import MaxGraphError, max_graph_errors
from harness.inputs.checkpoints import Checkpoint
from harness.max_whisper.audio_encoder import MaxAudioEncoder
from harness.max_whisper.engine import Engine, GraphSpec
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.substages import MaxSubStages
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.variant import FAITHFUL, Variant
from harness.progress import Notify, silent


def compile_ahead(
    checkpoint: Checkpoint, engine: Engine, variants: Sequence[Variant], progress: Notify = silent
) -> None:
    """Compile the faithful parts, then every graph of ``variants`` that builds, as one module."""
    progress("compiling the faithful model's stage graphs")
    for specs in part_specs(checkpoint, engine, FAITHFUL):
        engine.compile_together(specs)
    planted = [
        spec
        for variant in variants
        for specs in part_specs(checkpoint, engine, variant)
        for spec in specs
        if _builds(spec)
    ]
    progress("compiling the faults' graphs as one MAX module")
    try:
        with max_graph_errors():
            engine.compile_together(planted)
    except MaxGraphError as error:
        progress(f"MAX refused the faults' module, so each graph is compiled alone: {error}")


def part_specs(checkpoint: Checkpoint, engine: Engine, variant: Variant) -> list[list[GraphSpec]]:
    """The graphs ``localise`` may run for ``variant``, by part: log-mel, encoder and decoder
    stages, block sub-modules (each part's first unit)."""
    dims, state = checkpoint.dims, checkpoint.state_dict()
    parts = [cls(dims, state, engine, variant) for cls in (MaxAudioEncoder, MaxTextDecoder)]
    parts.append(MaxSubStages(dims, state, engine, variant))
    mel = MaxLogMel(dims.n_mels, engine, variant)
    return [[mel.spec], *(part.specs(*type(part).units[0]) for part in parts)]


def _builds(spec: GraphSpec) -> bool:
    """Whether MAX builds ``spec``'s graph; a harness bug while building propagates."""
    with contextlib.suppress(MaxGraphError), max_graph_errors():
        spec.build(Module())
        return True
    return False
