"""Write a ``Case`` as a folder: repro.py, input.npz, weights.npz, expected.npz, README.md.

The folder appears whole or not at all (``report.files.replaced_folder``). Before it is put in
place, its ``repro.py`` is run once as the user will run it, in a process of its own, so the
README can say what it printed, how long MAX took to compile its graph, and its exit status.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from harness.child_process import child_env
from harness.report.files import replaced_folder
from harness.repro.case import Case
from harness.repro.script import declared_weights, load_script, render

NPZ = ("input.npz", "weights.npz", "expected.npz")


@dataclass(frozen=True)
class Provenance:
    """Where a repro came from: the command, the checkpoint and the fault planted, if any."""

    command: str
    model: str
    weights: str  # pretrained, synthetic, fixture
    sha256: str
    fault: str | None = None
    fault_description: str | None = None


@dataclass(frozen=True)
class Outcome:
    """``repro.py``'s run: exit status, what it printed, and the compile time it reported."""

    returncode: int
    output: str

    @property
    def compile_seconds(self) -> float | None:
        for line in self.output.splitlines():
            if ": compile " in line:
                return float(line.split(": compile ")[1].split(" s")[0])
        return None


def write(case: Case, provenance: Provenance, out: Path) -> Outcome:
    """Write ``case`` into ``out`` (replacing it) and run its repro.py once; return that run."""
    with replaced_folder(out) as staging:
        script = staging / "repro.py"
        script.write_text(render(case.kind, header(case, provenance), values(case), case.variant))
        weights = weights_of(case, declared_weights(load_script(script)))
        for name, arrays in zip(NPZ, (case.inputs, weights, case.expected), strict=True):
            np.savez(staging / name, **arrays)
        outcome = run(script)
        (staging / "README.md").write_text(readme(case, provenance, outcome))
    return outcome


def weights_of(case: Case, names: list[str]) -> dict[str, np.ndarray]:
    """The tensors ``names`` (declared by the case's graph) as float32 NumPy."""
    return {name: np.asarray(case.tensors[name], dtype=np.float32) for name in names}


# Runs a script as `python repro.py` would, but with this project, PyTorch and openai-whisper
# unimportable (``-I`` alone would still see the editable install of this project).
STANDALONE = """
import runpy, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("harness", "torch", "whisper"):
            raise ImportError(f"{name}: a repro may import only max and numpy")
sys.meta_path.insert(0, Blocked())
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(script: Path) -> Outcome:
    """``python repro.py`` in its folder, isolated (``-I``) and without harness, torch, whisper."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, script.name],
        cwd=script.parent,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    return Outcome(done.returncode, done.stdout + done.stderr)


def values(case: Case) -> dict:
    """The script's constants: the case's, plus what every script reads (see main.py.tmpl)."""
    reported = {k: float(v) for k, v in (case.reported or {}).items()}
    return case.constants | {
        "GRAPH_NAME": f"repro_{case.kind}",
        "NPZ": NPZ,
        "INPUTS": case.input_types(),
        "LIMITS": case.limits,
        "REPORTED": reported,
    }


def versions() -> str:
    packages = ("max", "torch", "openai-whisper", "numpy")
    return ", ".join(f"{p} {version(p)}" for p in packages) + f", python {sys.version.split()[0]}"


USAGE = """\
Needs only max and numpy: `python repro.py` reads input.npz (the stage's input as the harness fed
it), weights.npz (the checkpoint's tensors it reads, openai-whisper's names and layouts) and
expected.npz ("torch": PyTorch's output, "float64": the same maths in float64), builds the stage as
one MAX graph, compiles and runs it on the CPU.
Output: compile and run times; each metric of MAX's output against PyTorch's with its limit and the
value the harness measured; each side's rel_l2 to float64 (the side far from it is wrong); then
FAIL and exit 1 while the disagreement reproduces, PASS and exit 0 when it is within tolerance."""
CORE_USAGE = """\
Needs only max and numpy: `python repro.py` reads input.npz (q, k, v as PyTorch projects them) and
expected.npz (openai-whisper's attention of them, "torch", and in float64), compiles the graph
below, runs it and prints MAX's rel_l2 to each; FAIL and exit 1 while over the limit, else PASS."""


def header(case: Case, provenance: Provenance) -> str:
    """repro.py's docstring: what it reproduces, where it came from, how to read its output."""
    fault = ""
    if provenance.fault:
        fault = (
            f"Planted fault: {provenance.fault}, {provenance.fault_description}. The code below "
            'is built with it (its switches: constants marked "planted fault").'
        )
    made = textwrap.fill(f"Made by:    {provenance.command}", 99, subsequent_indent=" " * 16)
    harness = textwrap.fill(f"Harness:    {_harness_line(case)}", 99, subsequent_indent=" " * 12)
    return f"""{textwrap.fill(f"Reproduces {case.title}.", 96)}
{textwrap.fill(fault, 99)}

{made}
Versions:   {versions()}
Checkpoint: {provenance.model} ({provenance.weights})
sha256:     {provenance.sha256}
{harness}

{CORE_USAGE if case.kind == "sub_core" else USAGE}
"""


def _harness_line(case: Case) -> str:
    if case.reported_error:
        return f"MAX refused the graph: {case.reported_error}"
    if case.reported is None:
        return "a piece its minimiser cut out of a failing stage (see ../README.md)"
    bound, _ = case.limits["rel_l2"]
    return f"rel_l2 {case.reported['rel_l2']:.4g} (limit {bound:.3g})"


def readme(case: Case, provenance: Provenance, outcome: Outcome) -> str:
    """One paragraph for a MAX engineer, then how this folder was made and what it printed."""
    shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in case.inputs.items())
    compiled = outcome.compile_seconds
    compile_time = f" ({compiled:.1f} s when it was made)" if compiled is not None else ""
    status = "still fails (exit 1)" if outcome.returncode else "passes (exit 0)"
    notes = "".join(f" {note}" for note in case.notes)
    verb = "disagree" if outcome.returncode else "agree within tolerance"
    measured = f"the harness's MAX run gave {_harness_line(case)}"
    if case.reported is None and case.reported_error is None:
        measured = "this piece, cut out of a failing stage by the harness's minimiser, fails alone"
    built = "the attention core" if case.kind == "sub_core" else "this one stage"
    source = "" if case.kind == "sub_core" else " from the tensors in `weights.npz`"
    return f"""# {case.title[0].upper()}{case.title[1:]}

openai-whisper (PyTorch) and a port of it to MAX Graph {verb} here. Fed the same input
({shapes}), {measured}. `python repro.py` needs only `max` and `numpy`: it builds {built} with
plain `max.graph.ops`{source}, compiles it{compile_time}, runs it on `input.npz`, compares
with PyTorch's output and float64's (`expected.npz`) and exits 1 while the disagreement
reproduces.{notes}

Made by `{provenance.command}`; checkpoint {provenance.model}, sha256 `{provenance.sha256}`.
When it was made, `python repro.py` {status} and printed:

```
{outcome.output.strip()}
```
"""
