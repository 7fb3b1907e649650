"""The report's end results on whole clips: each clip's transcript from PyTorch and from MAX side
by side, MAX's word changes marked, the word error rates, and the language each one detects.
These are what a user of the model sees; the stage sections say why they differ.
"""

from __future__ import annotations

import difflib
from typing import Any

from harness.compare.tolerances import Tolerances
from harness.compare.verdict import language_failures
from harness.report.cells import fixed, sci, status_cell
from harness.report.content import Row, Section, Status, Table, Words

CLIP_SETS = {
    "speech": "real human speech (fixtures/speech)",
    "audio": "espeak-ng speech (fixtures/audio)",
}


def transcripts_section(
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


def language_section(languages: list[dict[str, Any]] | None, limits: Tolerances) -> Section | None:
    if not languages:
        return None
    rows = [
        Row(
            (
                entry["audio"],
                f"{entry['torch']['language']} ({entry['torch']['probability']:.4f})",
                f"{entry['max']['language']} ({entry['max']['probability']:.4f})",
                sci(entry["kl"]),
                sci(entry["max_abs_probability"]),
                fixed(entry["top2_margin"]),
                status_cell(language_failures(entry, limits)),
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
            fixed(transcript.get("wer_max_vs_torch")),
            f"{fixed(wer.get('torch'))} / {fixed(wer.get('max'))}",
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
