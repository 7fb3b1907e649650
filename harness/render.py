"""Markdown rendering of ``parity.json``: the verdict and provenance first, then the tables."""

from __future__ import annotations

from typing import Any

from harness.tolerances import Tolerances

METRICS = ("cosine", "min_frame_cosine", "rel_l2", "max_abs", "snr_db")


def markdown(report: dict[str, Any]) -> str:
    sections = [_header(report), _encoder_table(report)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(report: dict[str, Any]) -> str:
    model, v = report["model"], report["versions"]
    banner = ""
    if model["weights"] != "pretrained":
        banner = (
            f"\n> **{model['weights'].upper()} WEIGHTS** — not a pretrained Whisper: numerical parity "
            "is meaningful, the transcribed text is not.\n"
        )
    divergent = report["encoder"]["first_divergent_stage"]
    return "\n".join(
        [
            f"# Parity report: {model['name']} ({report['device']}, {report['dtype']})",
            banner,
            f"- First divergent encoder stage: **{divergent or 'none'}**",
            f"- Weights: {model['weights']}, `{model['checkpoint']}` (sha256 {model['sha256'][:12]})",
            f"- Versions: max {v['max']}, torch {v['torch']}, openai-whisper {v['whisper']}",
            f"- Encoder input: 30 s window of `{report['encoder']['audio']}` (speech, then padding)",
        ]
    )


def _encoder_table(report: dict[str, Any]) -> str:
    encoder = report["encoder"]
    header = (
        "| stage | iso rel_l2 | iso cosine | iso min frame cos | iso max_abs | iso SNR dB "
        "| chained rel_l2 | chained min frame cos | verdict |"
    )
    rows = [header, "|" + "---|" * 9]
    for result in encoder["stages"]:
        iso, ch = result["isolated"], result["chained"]
        verdict = _verdict(report, result)
        name = result["stage"]
        if name == encoder["first_divergent_stage"]:
            name = f"**{name}** ⟵ first divergent"
        rows.append(
            f"| {name} | {_num(iso['rel_l2'])} | {_cos(iso['cosine'])} | {_cos(iso['min_frame_cosine'])} "
            f"| {_num(iso['max_abs'])} | {_db(iso['snr_db'])} | {_num(ch['rel_l2'])} "
            f"| {_cos(ch['min_frame_cosine'])} | {verdict} |"
        )
    fused = encoder["fused"]
    rows.append(
        f"| *fused encoder* | {_num(fused['rel_l2'])} | {_cos(fused['cosine'])} "
        f"| {_cos(fused['min_frame_cosine'])} | {_num(fused['max_abs'])} | {_db(fused['snr_db'])} "
        f"| | | {_fused_verdict(report)} |"
    )
    return "## Encoder, stage by stage\n\n" + "\n".join(rows)


def _verdict(report: dict[str, Any], result: dict[str, Any]) -> str:
    limits = Tolerances(report["dtype"], report["tolerances"])
    bad = limits.violations(result["isolated"], "isolated")
    bad += [f"chained {v}" for v in limits.violations(result["chained"], "chained")]
    return "OK" if not bad else "NOT OK: " + "; ".join(bad)


def _fused_verdict(report: dict[str, Any]) -> str:
    limits = Tolerances(report["dtype"], report["tolerances"])
    bad = limits.violations(report["encoder"]["fused"], "fused")
    return "OK" if not bad else "NOT OK: " + "; ".join(bad)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def _cos(value: float | None) -> str:
    return "—" if value is None else f"{value:.9f}"


def _db(value: float | None) -> str:
    return "∞" if value is None or value == float("inf") else f"{value:.1f}"
