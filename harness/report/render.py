"""What the report says, in order, once: ``outline`` turns ``parity.json`` into sections and
tables; ``markdown`` (here) and ``html`` (report/html.py) only format them, so the two can never
tell different stories.

The verdict and the weights' provenance come first, loudly when the weights are not pretrained;
then the encoder stage table, the mel and fused-encoder rows, the decoder, each stage's noise
floor next to its tolerance, the transcripts side by side, the speed. A stage over tolerance gets
the float64 arbiter's verdict under its table. Sections absent from the document are skipped.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from harness.compare.tolerances import Tolerances
from harness.compare.verdict import (
    check,
    language_failures,
    limits_of,
    mode_failures,
    stage_failures,
    verdict,
)


@dataclass(frozen=True)
class Status:
    """An OK / NOT OK cell, coloured in HTML."""

    ok: bool
    text: str


@dataclass(frozen=True)
class Words:
    """Words of a transcript diff: ``change`` is "" (same), "del" (PyTorch's) or "ins" (MAX's)."""

    text: str
    change: str = ""


Cell = str | Status | tuple[Words, ...]


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    style: str = ""  # "limit" (the tolerance row) or "divergent" (the first divergent stage)


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[Row]


@dataclass(frozen=True)
class Section:
    title: str
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names written by harness/report/plots.py


@dataclass(frozen=True)
class Outline:
    title: str
    banner: str | None
    verdict: dict[str, Any]
    provenance: list[str]
    sections: list[Section]


STAGE_COLUMNS = (
    "stage",
    "isolated rel_l2",
    "isolated 1−cos",
    "isolated 1−min frame cos",
    "isolated max_abs",
    "isolated SNR dB",
    "chained rel_l2",
    "chained 1−min frame cos",
    "status",
)
METRIC_LABELS = {"cosine": "1−cos", "min_frame_cosine": "1−min frame cos", "snr_db": "SNR dB"}
METRIC_COLUMNS = ("rel_l2", "1−cos", "1−min frame cos", "max_abs", "SNR dB")


def outline(document: dict[str, Any]) -> Outline:
    """The report's content, format-free. Optional sections appear only when present."""
    model = document["model"]
    limits = limits_of(document)
    sections = [
        _encoder_section(document.get("encoder"), limits),
        _whole_graphs_section(document, limits),
        _decoder_section(document.get("decoder", {}).get("teacher_forced"), limits),
        _noise_floor_section(document, limits),
        _transcripts_section(document.get("transcripts"), document.get("wer") or {}),
        _language_section(document.get("language"), limits),
        _peers_section(document, limits),
        _speed_section(document.get("speed")),
    ]
    return Outline(
        title=f"Parity report: {model['name']} ({document['device']}, {document['dtype']})",
        banner=_banner(model["weights"]),
        verdict=verdict(document),
        provenance=_provenance(document),
        sections=[s for s in sections if s],
    )


def _banner(weights: str) -> str | None:
    """Random or hand-made weights give meaningful numerical parity but meaningless text."""
    if weights == "pretrained":
        return None
    if weights == "fixture":
        return (
            "FIXTURE WEIGHTS — not a pretrained Whisper checkpoint but a small one trained by this "
            "project on espeak-ng speech with a vocabulary of a few hundred words: its WER means "
            "something on its held-out clips (*_heldout), not on sentences outside its vocabulary."
        )
    return (
        f"{weights.upper()} WEIGHTS — not a pretrained Whisper checkpoint: numerical parity is "
        "meaningful, the transcribed text is not."
    )


def _provenance(document: dict[str, Any]) -> list[str]:
    model = document["model"]
    lines = [
        f"Weights: {model['weights']}, checkpoint {model['checkpoint']}",
        f"Checkpoint sha256: {model['sha256']}",
        *_source(model.get("source")),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in document["versions"].items()),
    ]
    if model.get("dims"):
        lines.append("Dimensions: " + ", ".join(f"{k} {v}" for k, v in model["dims"].items()))
    compile_s = document.get("compile_s")
    if compile_s:
        lines.append(f"MAX graphs compiled: {len(compile_s)}, {sum(compile_s.values()):.1f} s")
    return lines


def _source(source: dict[str, Any] | None) -> list[str]:
    """Where converted weights came from: format, packages, the hash of the file as shipped."""
    if not source:
        return []
    origin = ", ".join(source.get("packages") or source.get("files", []))
    what = f"{source['format']} {source['dtype']}"
    lines = [f"Converted from: {what} ({origin}), sha256 {source['sha256']}"]
    if source.get("note"):
        lines.append(f"Weights: {source['note']}")
    return lines


def _encoder_section(encoder: dict[str, Any] | None, limits: Tolerances) -> Section | None:
    if not encoder or not encoder.get("stages"):
        return None
    divergent = encoder.get("first_divergent_stage")
    bullets = [
        "Isolated: each MAX stage fed PyTorch's input to it (its own error). Chained: fed MAX's "
        "previous output (the drift accumulated so far).",
        f"First divergent stage (first isolated error over tolerance): {divergent or 'none'}",
        *_arbiter_lines(_isolated_stages(encoder["stages"]), limits),
    ]
    if encoder.get("audio"):
        bullets.insert(0, f"Input: 30 s window of {encoder['audio']} (speech, then padding)")
    return Section(
        "Encoder, stage by stage",
        bullets,
        [stage_table(encoder["stages"], limits, divergent)],
        ["encoder_stages.png", "encoder_frame_error.png"],
    )


def stage_table(stages: list[dict[str, Any]], limits: Tolerances, divergent: str | None) -> Table:
    """Isolated and chained metrics per stage under a row of the limits they are held to."""
    limit_row = Row(
        (
            "limit",
            _limit(limits, "isolated", "rel_l2"),
            _limit(limits, "isolated", "cosine"),
            _limit(limits, "isolated", "min_frame_cosine"),
            "",
            "",
            _limit(limits, "chained", "rel_l2"),
            _limit(limits, "chained", "min_frame_cosine"),
            "",
        ),
        style="limit",
    )
    rows = [limit_row]
    for result in stages:
        iso, chained = result["isolated"], result["chained"]
        bad = stage_failures(result, limits)
        first = result["stage"] == divergent
        rows.append(
            Row(
                (
                    result["stage"] + (" ⟵ first divergent" if first else ""),
                    *_metric_cells(iso),
                    _sci(chained.get("rel_l2")),
                    _one_minus(chained.get("min_frame_cosine")),
                    _status(bad),
                ),
                style="divergent" if first else "",
            )
        )
    return Table(STAGE_COLUMNS, rows)


def _whole_graphs_section(document: dict[str, Any], limits: Tolerances) -> Section | None:
    """The mel front end and the one-graph encoder: single comparisons, one row each."""
    rows = []
    if "mel" in document:
        rows.append(_single_row("mel spectrogram", document["mel"], "mel", limits))
    fused = document.get("encoder", {}).get("fused")
    if fused:
        rows.append(_single_row("encoder, one fused graph", fused, "fused", limits))
    if not rows:
        return None
    mel = [s for s in _isolated(document) if s.stage == "mel"]
    return Section(
        "Mel spectrogram and fused encoder",
        [
            "Each is one MAX graph fed the same input as PyTorch, compared with its output.",
            *_arbiter_lines(mel, limits),
        ],
        [Table(("comparison", *METRIC_COLUMNS, "limit", "status"), rows)],
    )


def _single_row(name: str, metrics: dict[str, Any], kind: str, limits: Tolerances) -> Row:
    limit = ", ".join(
        f"{METRIC_LABELS.get(metric, metric)} {_limit(limits, kind, metric)}"
        for metric in limits.limits.get(kind, {})
    )
    return Row((name, *_metric_cells(metrics), limit, _status(check(metrics, kind, limits))))


def _decoder_section(teacher_forced: dict[str, Any] | None, limits: Tolerances) -> Section | None:
    if not teacher_forced:
        return None
    mismatched = [s["step"] for s in teacher_forced.get("per_step", []) if not s["top1_match"]]
    bullets = [
        "Teacher forcing: both decoders read the same token sequence, so every step compares the "
        "next-token distributions on equal terms.",
        f"Steps where the top-1 token differs: {', '.join(map(str, mismatched)) or 'none'}",
    ]
    summary = Table(
        ("steps", "top-1 agreement", "max KL", "max |Δ logit|", "min top-2 gap", "status"),
        [
            Row(
                (
                    str(teacher_forced["steps"]),
                    f"{teacher_forced['top1_agreement']:.2%}",
                    _sci(teacher_forced.get("max_kl")),
                    _sci(teacher_forced.get("max_abs_logit")),
                    _fixed(teacher_forced.get("min_top2_gap")),
                    _status(check(teacher_forced, "teacher_forced", limits)),
                )
            )
        ],
    )
    tables = [summary]
    if teacher_forced.get("stages"):
        divergent = teacher_forced.get("first_divergent_stage")
        tables.append(stage_table(teacher_forced["stages"], limits, divergent))
        bullets += _arbiter_lines(_isolated_stages(teacher_forced["stages"]), limits)
    return Section(
        "Decoder, teacher-forced", bullets, tables, ["decoder_steps.png", "decoder_stages.png"]
    )


CLIP_SETS = {
    "speech": "real human speech (fixtures/speech)",
    "audio": "espeak-ng speech (fixtures/audio)",
}


def _transcripts_section(
    transcripts: list[dict[str, Any]] | None, wer: dict[str, dict[str, Any]]
) -> Section | None:
    if not transcripts:
        return None
    bullets = [
        f"WER against the true text, {CLIP_SETS.get(name, name)}: PyTorch "
        f"{summary['torch']:.1%}, MAX {summary['max']:.1%} ({summary['clips']} clips, "
        f"{summary['words']} words, openai-whisper's English normaliser)"
        for name, summary in wer.items()
    ]
    rows = [_transcript_row(t) for t in transcripts]
    columns = (
        "audio",
        "reference",
        "PyTorch",
        "MAX, changes from PyTorch marked",
        "tokens",
        "WER MAX vs PyTorch",
        "WER vs reference (PyTorch / MAX)",
    )
    return Section("Transcripts", bullets, [Table(columns, rows)])


LANGUAGE_COLUMNS = (
    "audio",
    "PyTorch (p)",
    "MAX (p)",
    "KL",
    "max |Δp|",
    "PyTorch top-2 margin",
    "status",
)


def _language_section(languages: list[dict[str, Any]] | None, limits: Tolerances) -> Section | None:
    if not languages:
        return None
    rows = [
        Row(
            (
                entry["audio"],
                f"{entry['torch']['language']} ({entry['torch']['probability']:.4f})",
                f"{entry['max']['language']} ({entry['max']['probability']:.4f})",
                _sci(entry["kl"]),
                _sci(entry["max_abs_probability"]),
                _fixed(entry["top2_margin"]),
                _status(language_failures(entry, limits)),
            )
        )
        for entry in languages
    ]
    bullets = [
        "whisper.decoding.detect_language on each clip's first 30 s window, MAX's log-mel, encoder "
        "and decoder behind it; the language probabilities compared over every language."
    ]
    return Section("Language identification", bullets, [Table(LANGUAGE_COLUMNS, rows)])


def _transcript_row(transcript: dict[str, Any]) -> Row:
    torch_text, max_text = transcript["torch"]["text"], transcript["max"]["text"]
    divergent = transcript.get("first_divergent_token")
    tokens = Status(True, "equal")
    if not transcript["tokens_equal"]:
        tokens = Status(False, f"differ from token {divergent}")
    wer = transcript.get("wer_vs_reference") or {}
    return Row(
        (
            f"{transcript['audio']} ({transcript['duration_s']:.1f} s)",
            transcript.get("reference_text") or "—",
            torch_text,
            word_diff(torch_text, max_text),
            tokens,
            _fixed(transcript.get("wer_max_vs_torch")),
            f"{_fixed(wer.get('torch'))} / {_fixed(wer.get('max'))}",
        )
    )


def word_diff(before: str, after: str) -> tuple[Words, ...]:
    """``after`` as runs of words, with what ``before`` had instead marked deleted."""
    old, new = before.split(), after.split()
    runs = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            runs.append(Words(" ".join(new[j1:j2])))
            continue
        if i2 > i1:
            runs.append(Words(" ".join(old[i1:i2]), "del"))
        if j2 > j1:
            runs.append(Words(" ".join(new[j1:j2]), "ins"))
    return tuple(runs)


SPEED_ROWS = (
    ("encoder_ms", "encoder, 30 s window (ms)"),
    ("decode_ms_per_token", "decoding (ms per token)"),
    ("end_to_end_rtf", "end to end (real-time factor)"),
    ("first_transcript_s", "time to first transcript, new process (s)"),
)


def _speed_section(speed: dict[str, Any] | None) -> Section | None:
    if not speed:
        return None
    engines = speed.get("engines", {})
    measures = [(key, label) for key, label in SPEED_ROWS if key in speed]
    rows = [Row((label, *(_median(speed[key], e) for e in engines))) for key, label in measures]
    bullets = [
        "Medians of the timed runs (min–max in brackets), after one warm-up; the engines' runs "
        "take turns, same checkpoint, audio, device and thread count."
    ]
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


def _speedup_table(speed: dict[str, Any], measures: list[tuple[str, str]]) -> Table:
    """How many times faster each MAX mode is than each peer (peer's median / MAX's)."""
    engines = speed.get("engines", {})
    modes = [e for e in engines if e.startswith("max")]
    peers = [e for e in engines if not e.startswith("max")]
    rows = [
        Row((f"{engines[mode]}, {label}", *(_times(speedup(speed[key], mode, p)) for p in peers)))
        for mode in modes
        for key, label in measures
    ]
    return Table(("MAX speed-up (peer time / MAX time)", *(engines[p] for p in peers)), rows)


def _median(measure: dict[str, Any], engine: str) -> str:
    """``median (min–max)``, or — for an engine this measure does not time."""
    median = measure["median"].get(engine)
    return "—" if median is None else _fixed(median) + _spread(measure, engine)


def _spread(measure: dict[str, Any], engine: str) -> str:
    runs = measure.get("runs", {}).get(engine)
    return f" ({_fixed(min(runs))}–{_fixed(max(runs))})" if runs else ""


def speedup(measure: dict[str, Any], mode: str = "max", peer: str = "torch") -> float | None:
    """``peer``'s time over MAX ``mode``'s: above 1 means MAX is faster; None when missing."""
    return measure.get("speedup", {}).get(mode, {}).get(peer)


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


PEER_COLUMNS = (
    "engine",
    "encoder rel_l2",
    "encoder 1−min frame cos",
    "teacher-forced top-1",
    "max KL",
    "max |Δ logit|",
    "transcripts token-equal to PyTorch",
    "WER vs true text",
    "status",
)


def _peers_section(document: dict[str, Any], limits: Tolerances) -> Section | None:
    """Every engine's drift from PyTorch on the same inputs: MAX's weights modes, CTranslate2."""
    peers = document.get("peers")
    if not peers:
        return None
    title = "Drift of every engine: MAX weights modes and CTranslate2 (faster-whisper's engine)"
    skipped = [f"CTranslate2 not compared: {peers['skipped']}."] if "skipped" in peers else []
    if "labels" not in peers:
        return Section(title, skipped)
    wer = document.get("wer") or {}
    first = "speech" if "speech" in wer else next(iter(wer), None)
    rows = [
        _peer_row(
            label,
            peers[name],
            first,
            _status(mode_failures(peers[name], name, limits)) if name.startswith("max-") else "",
        )
        for name, label in peers["labels"].items()
    ]
    steps = peers["max"]["teacher_forced"]["steps"]
    bullets = [
        "Each engine against PyTorch float32 on the same checkpoint and inputs: the encoder on "
        f"the report's window, the decoder teacher-forced on its true text ({steps} positions, "
        f"from position {peers['teacher_forced_from_step']}: CTranslate2 gives no logits of "
        "the prompt), the transcripts of the clips above.",
        "A MAX weights mode stores the decoding step's matrices in that format (float32 "
        "activations; GGML blocks through ops.qmatmul); its encoder is MAX float32's. Its limits "
        "are the weights:MODE entries of fixtures/tolerances.json.",
        *skipped,
        "Versions: " + ", ".join(f"{k} {v}" for k, v in peers.get("versions", {}).items()),
    ]
    if first:
        torch_wer = wer[first]["torch"]
        bullets.append(f"WER: {CLIP_SETS.get(first, first)}, pooled; PyTorch {torch_wer:.1%}.")
    return Section(title, bullets, [Table(PEER_COLUMNS, rows)])


def _peer_row(label: str, entry: dict[str, Any], clip_set: str | None, status: Cell) -> Row:
    encoder, teacher_forced = entry.get("encoder"), entry["teacher_forced"]
    wer = entry["wer"].get(clip_set) if clip_set else None
    return Row(
        (
            label,
            _sci(encoder["rel_l2"]) if encoder else "as MAX float32",
            _one_minus(encoder["min_frame_cosine"]) if encoder else "",
            f"{teacher_forced['top1_agreement']:.2%}",
            _sci(teacher_forced["max_kl"]),
            _sci(teacher_forced["max_abs_logit"]),
            f"{entry['tokens_equal']} / {entry['clips']}",
            "—" if wer is None else f"{wer:.1%}",
            status,
        )
    )


class Isolated(NamedTuple):
    """One stage's isolated comparison as the noise floor table and the arbiter lines read it."""

    stage: str
    kind: str  # its tolerance kind: "mel" or "isolated"
    metrics: dict[str, Any]  # MAX vs PyTorch
    arbiter: dict[str, Any] | None  # the float64 arbiter's verdict, when it ran


ARBITER_SAYS = {
    "reference": "PyTorch is closer, so the error is MAX's",
    "max": "MAX is closer, so the error is the reference's",
    "tie": "both are within tolerance of float64: round-off on both sides, neither is wrong",
}
ARBITER_CELLS = {"reference": "PyTorch closer", "max": "MAX closer", "tie": "tie"}
NOISE_FLOOR_COLUMNS = (
    "stage",
    "floor rel_l2 (PyTorch vs float64)",
    "MAX vs float64 rel_l2",
    "MAX vs PyTorch rel_l2",
    "tolerance rel_l2",
    "tolerance / floor",
    "(MAX vs PyTorch) / floor",
    "arbiter",
)


def _isolated_stages(stages: list[dict[str, Any]]) -> list[Isolated]:
    return [Isolated(s["stage"], "isolated", s["isolated"], s.get("arbiter")) for s in stages]


def _isolated(document: dict[str, Any]) -> Iterator[Isolated]:
    """The mel, then every encoder and decoder stage, isolated."""
    if "mel" in document:
        yield Isolated("mel", "mel", document["mel"], document.get("mel_arbiter"))
    yield from _isolated_stages(document.get("encoder", {}).get("stages", []))
    teacher_forced = document.get("decoder", {}).get("teacher_forced") or {}
    yield from _isolated_stages(teacher_forced.get("stages", []))


def _arbiter_lines(stages: Iterable[Isolated], limits: Tolerances) -> list[str]:
    """One line per stage over tolerance that the arbiter judged."""
    return [
        arbiter_line(s.arbiter) for s in stages if s.arbiter and check(s.metrics, s.kind, limits)
    ]


def arbiter_line(verdict: dict[str, Any]) -> str:
    """``Float64 arbiter on blocks.2: MAX 3.0e-03 from float64, PyTorch 1.1e-07: …``."""
    return (
        f"Float64 arbiter on {verdict['stage']}: MAX {_sci(verdict['max_vs_f64_rel_l2'])} from "
        f"float64, PyTorch {_sci(verdict['torch_vs_f64_rel_l2'])}: "
        + ARBITER_SAYS[verdict["closer"]]
    )


def _noise_floor_section(document: dict[str, Any], limits: Tolerances) -> Section | None:
    """Each stage's floor next to its tolerance and MAX's error, as multiples of the floor."""
    floors = document.get("noise_floor")
    if not floors:
        return None
    rows = [
        _floor_row(s, floors[s.stage], limits) for s in _isolated(document) if s.stage in floors
    ]
    bullets = [
        "Floor: openai-whisper's float32 output of each stage against the same stage in float64, "
        "fed the same float32 input: the round-off no float32 implementation avoids. A faithful "
        "port's error against PyTorch is a small multiple of it (the last ratio column), and each "
        "tolerance reads as k × floor (the first).",
        "Arbiter: MAX's output against the same float64 result. A tie: both sides within the "
        "stage's rel_l2 tolerance of float64. Else the closer side is named; PyTorch closer puts "
        "the error in MAX.",
    ]
    if any(floors[s]["rel_l2"] == 0 for s in floors):
        bullets.append("A floor of 0: PyTorch float32 equals float64 bit for bit; no ratio.")
    return Section("Noise floor and float64 arbiter", bullets, [Table(NOISE_FLOOR_COLUMNS, rows)])


def _floor_row(stage: Isolated, floor: dict[str, Any], limits: Tolerances) -> Row:
    value, limit = floor["rel_l2"], limits.limit(stage.kind, "rel_l2")
    measured, verdict = stage.metrics.get("rel_l2"), stage.arbiter
    return Row(
        (
            stage.stage,
            "0 (bit-identical)" if value == 0 else _sci(value),
            _sci(verdict["max_vs_f64_rel_l2"]) if verdict else "—",
            _sci(measured),
            _sci(limit),
            _ratio(limit, value),
            _ratio(measured, value),
            _arbiter_cell(verdict),
        )
    )


def _ratio(value: float | None, floor: float) -> str:
    """``value`` as a multiple of the floor; nothing to show when the floor is exactly 0."""
    if value is None:
        return "—"
    return "— (floor 0)" if floor == 0 else f"{value / floor:.3g}×"


def _arbiter_cell(verdict: dict[str, Any] | None) -> Cell:
    if not verdict:
        return "—"
    return Status(verdict["closer"] != "reference", ARBITER_CELLS[verdict["closer"]])


def _metric_cells(metrics: dict[str, Any]) -> tuple[str, ...]:
    return (
        _sci(metrics.get("rel_l2")),
        _one_minus(metrics.get("cosine")),
        _one_minus(metrics.get("min_frame_cosine")),
        _sci(metrics.get("max_abs")),
        _db(metrics.get("snr_db")),
    )


def _status(failures: list[str]) -> Status:
    return Status(True, "OK") if not failures else Status(False, "NOT OK: " + "; ".join(failures))


def _limit(limits: Tolerances, kind: str, metric: str) -> str:
    value = limits.limit(kind, metric)
    if value is None:
        return ""
    return f"≤ {_sci(1 - value if 'cosine' in metric else value)}"


def _sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def _fixed(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _one_minus(cosine: float | None) -> str:
    """1 − cosine: 0.9999999999998 and 0.9999999 both print as 1.000000 otherwise."""
    return "—" if cosine is None else _sci(max(1.0 - cosine, 0.0))


def _db(value: float | None) -> str:
    return "∞" if value is None or value == float("inf") else f"{value:.1f}"


# -- Markdown ------------------------------------------------------------------------------------


def markdown(document: dict[str, Any], plots: Iterable[str] = ()) -> str:
    """report.md; ``plots`` are the PNG file names written next to it, linked where they belong."""
    report, available = outline(document), set(plots)
    parts = [f"# {_md(report.title)}"]
    if report.banner:
        parts.append(f"> **{_md(report.banner)}**")
    parts.append(_md_verdict(report.verdict))
    parts.append("\n".join(f"- {_md(line)}" for line in report.provenance))
    for section in report.sections:
        parts.append(_md_section(section, available))
    return "\n\n".join(parts) + "\n"


def _md_verdict(result: dict[str, Any]) -> str:
    if result["pass"]:
        return "**Verdict: PASS** — every comparison is within tolerance."
    lines = [f"**Verdict: FAIL** — {len(result['failures'])} problem(s):", ""]
    return "\n".join(lines + [f"- `{failure}`" for failure in result["failures"]])


def _md_section(section: Section, available: set[str]) -> str:
    parts = [f"## {_md(section.title)}"]
    if section.bullets:
        parts.append("\n".join(f"- {_md(line)}" for line in section.bullets))
    parts += [_md_table(table) for table in section.tables]
    parts += [f"![{name}]({name})" for name in section.plots if name in available]
    return "\n\n".join(parts)


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md(c) for c in table.columns) + " |"]
    lines.append("|" + "---|" * len(table.columns))
    for row in table.rows:
        cells = [_md_cell(cell) for cell in row.cells]
        if row.style == "divergent":
            cells[0] = f"**{cells[0]}**"
        elif row.style == "limit":
            cells = [f"*{cell}*" if cell else "" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Status):
        return _md(cell.text) if cell.ok else f"**{_md(cell.text)}**"
    if isinstance(cell, tuple):
        marks = {"": "{}", "del": "~~{}~~", "ins": "**{}**"}
        return " ".join(marks[run.change].format(_md(run.text)) for run in cell)
    return _md(cell)


_MD_SPECIAL = re.compile(r"[\\`*~|<\[\]]|(?<!\w)_|_(?!\w)")


def _md(text: str) -> str:
    """Plain text made inert in Markdown (a transcript may hold any character). Only what is
    markup mid-line is escaped, so the raw file stays readable: ``>`` and ``#`` matter only at
    the start of a line, and underscores inside a word are not emphasis."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(text.split()))
