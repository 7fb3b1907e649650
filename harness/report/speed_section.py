"""The report's speed section: each engine's median timings side by side and how many times
faster each MAX mode is than each peer. ``SPEED_ROWS`` and ``speedup`` are also what plots.py
draws speed.png from (with ``speedup_text``), so the table and the figure read the measures alike.
"""

from __future__ import annotations

from typing import Any

from harness.report.cells import fixed
from harness.report.content import Row, Section, Table

SPEED_ROWS = (
    ("encoder_ms", "encoder, 30 s window (ms)"),
    ("decode_ms_per_token", "decoding (ms per token)"),
    ("end_to_end_rtf", "end to end (real-time factor)"),
    ("batched_rtf", "long audio, chunks in one batch (real-time factor)"),
    ("first_transcript_s", "time to first transcript, new process (s)"),
)


def speed_section(speed: dict[str, Any] | None) -> Section | None:
    if not speed:
        return None
    engines = speed.get("engines", {})
    measures = [(key, label) for key, label in SPEED_ROWS if key in speed]
    rows = [Row((label, *(_median(speed[key], e) for e in engines))) for key, label in measures]
    bullets = [
        "Medians of the timed runs (min–max in brackets), after one warm-up; the engines' runs "
        "take turns, same checkpoint, audio, device and thread count.",
        "Speed-ups: the ratio of the medians, then in brackets the lowest and highest ratio of "
        "one round (each engine's run i). A range that spans 1.00× is no lead: the machine's "
        "noise is larger than the difference.",
    ]
    if "machine" in speed:
        bullets.append(f"Machine: {_machine(speed['machine'])}")
    if where := speed.get("timing_process"):
        bullets.append(f"Timed: {where}.")
    if (idle := speed.get("idle_cpu_share")) is not None:
        bullets.append(
            f"While idle after the timings, the timing process burnt {idle:.0%} of a core. "
            "Once a process has run a MAX graph, MAX 26.7 keeps a thread that wakes ~4,500 "
            "times a second (~16% of a core) and slows every engine beside it (README, Where "
            "MAX stands)."
        )
    if "threads" in speed:
        bullets.append(f"CPU threads: {speed['threads']}")
    if "decode_tokens" in speed:
        bullets.append(
            f"Decoding: greedy with KV cache from the same audio features, "
            f"{speed['decode_tokens']} tokens per run (CTranslate2: its marginal time per token)."
        )
    if clip := speed.get("end_to_end_clip"):
        bullets.append(
            f"End to end: {clip['name']} ({clip['seconds']} s), audio file to text "
            "(openai-whisper's transcribe; faster-whisper's for CTranslate2)."
        )
    if work := speed.get("end_to_end_work"):
        done = "; ".join(
            f"{engines.get(e, e)} {w['windows']} window{'s' * (w['windows'] != 1)}, "
            f"{w['tokens']} tokens"
            for e, w in work.items()
        )
        bullets.append(
            f"End-to-end work (30 s windows encoded, tokens kept): {done}. Where an engine's last "
            "segment of a window ends decides whether the tail takes a window of its own."
        )
    if batched := speed.get("batched"):
        bullets.append(_batched_text(batched, engines))
    if clip := speed.get("first_transcript_clip"):
        bullets.append(
            f"Time to first transcript: {clip['name']} ({clip['seconds']:.1f} s), a new process "
            "per run with warm caches: python -m harness transcribe (PyTorch, MAX with each "
            "weights mode), a faster-whisper script (CTranslate2)."
        )
    if load := speed.get("load_s"):
        loads = ", ".join(f"{engines.get(e, e)} {seconds:.2f} s" for e, seconds in load.items())
        bullets.append(f"Load (not in the timings): {loads}")
    compile_s = speed.get("compile_s")
    if compile_s:
        cold = compile_s.get("cold")
        cold_text = "not measured" if cold is None else f"{cold:.1f} s"
        bullets.append(f"MAX compile: cold {cold_text}, warm (cached) {compile_s['warm']:.1f} s")
    tables = [Table(("measure", *engines.values()), rows), _speedup_table(speed, measures)]
    return Section("Speed", bullets, tables, ["speed.png"])


def _machine(machine: dict[str, Any]) -> str:
    """One line for the report: 'Intel Xeon, 2 CPUs, AMX + AVX-512, L2 2 MiB, L3 480 MiB, ...'."""
    parts = [machine["cpu"], f"{machine['cpus']} CPUs"]
    if machine["simd"]:
        parts.append(" + ".join(machine["simd"]))
    parts += [f"{level} {size}" for level, size in machine["caches"].items()]
    if machine["memory_gib"]:
        parts.append(f"{machine['memory_gib']} GiB memory")
    return ", ".join(parts) + f"; measured {machine['date']}"


def _batched_text(batched: dict[str, Any], engines: dict[str, str]) -> str:
    chunks = ", ".join(f"{start:.1f}–{end:.1f}" for start, end in batched["chunks_s"])
    written = "; ".join(
        f"{engines.get(e, e)} {w['tokens']} tokens, "
        f"{'the same as PyTorch' if w['tokens_equal_to_torch'] else 'not the same as PyTorch'}, "
        f"WER {w['wer']:.1%}"
        for e, w in batched["engines"].items()
        if e != "torch"
    )
    torch_wer = batched["engines"].get("torch", {}).get("wer")
    torch_text = "" if torch_wer is None else f" (PyTorch's WER {torch_wer:.1%})"
    clips, seconds = len(batched["clips"]), batched["seconds"]
    return (
        f"Long audio: {clips} fixture clips end to end ({seconds:.0f} s), "
        f"cut into 30 s chunks at pauses ({chunks} s) and decoded {batched['batch_size']} chunks "
        "per batch, greedy, no timestamps: openai-whisper's decode for PyTorch and MAX, "
        f"faster-whisper's BatchedInferencePipeline on the same chunks{torch_text}. {written}."
    )


def _speedup_table(speed: dict[str, Any], measures: list[tuple[str, str]]) -> Table:
    """How many times faster each MAX mode is than each peer (peer's median / MAX's)."""
    engines = speed.get("engines", {})
    modes = [e for e in engines if e.startswith("max")]
    peers = [e for e in engines if not e.startswith("max")]
    rows = [
        Row((f"{engines[mode]}, {label}", *(speedup_text(speed[key], mode, p) for p in peers)))
        for mode in modes
        for key, label in measures
    ]
    return Table(("MAX speed-up (peer time / MAX time)", *(engines[p] for p in peers)), rows)


def speedup_text(measure: dict[str, Any], mode: str = "max", peer: str = "torch") -> str:
    """``1.13× (0.95–1.30×)``: the medians' ratio, then the lowest and highest round's."""
    ratio = speedup(measure, mode, peer)
    rounds = measure.get("speedup_runs", {}).get(mode, {}).get(peer)
    if ratio is None or not rounds:
        return _times(ratio)
    return f"{_times(ratio)} ({min(rounds):.2f}–{_times(max(rounds))})"


def _median(measure: dict[str, Any], engine: str) -> str:
    """``median (min–max)``, or — for an engine this measure does not time."""
    median = measure["median"].get(engine)
    return "—" if median is None else fixed(median) + _spread(measure, engine)


def _spread(measure: dict[str, Any], engine: str) -> str:
    runs = measure.get("runs", {}).get(engine)
    return f" ({fixed(min(runs))}–{fixed(max(runs))})" if runs else ""


def speedup(measure: dict[str, Any], mode: str = "max", peer: str = "torch") -> float | None:
    """``peer``'s time over MAX ``mode``'s: above 1 means MAX is faster; None when missing."""
    return measure.get("speedup", {}).get(mode, {}).get(peer)


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"
