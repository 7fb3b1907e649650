"""report.html: the same outline as report.md (harness/report/outline.py), self-contained.

One file with the figures inline as base64 PNG and plain CSS, no script: it can be attached to a
CI run or mailed and still open anywhere.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from harness.report.content import Cell, Outline, Section, Status, Table
from harness.report.outline import outline

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.banner { background: #b00020; color: #fff; font-weight: bold; font-size: 1.15em;
          padding: .8em 1em; border-radius: 4px; }
.verdict { font-size: 1.3em; font-weight: bold; padding: .5em 1em; border-radius: 4px; }
.verdict.pass { background: #e6f4ea; color: #1e6b34; }
.verdict.fail { background: #fce8e6; color: #a50e0e; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
tr.limit td { font-style: italic; color: #555; background: #fafafa; }
tr.divergent td { background: #fff4ce; font-weight: bold; }
td.ok { color: #1e6b34; } td.bad { color: #a50e0e; font-weight: bold; background: #fce8e6; }
del { background: #fce8e6; color: #a50e0e; } ins { background: #e6f4ea; text-decoration: none;
    font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
""".strip()


def html(document: dict[str, Any], images: dict[str, bytes] | None = None) -> str:
    """The whole page; ``images`` are the PNGs from ``harness.report.plots.render`` by file name."""
    report = outline(document)
    body = [f"<h1>{escape(report.title)}</h1>"]
    if report.banner:
        body.append(f'<p class="banner">{escape(report.banner)}</p>')
    body.append(_verdict(report))
    body.append(_list(report.provenance))
    body += [_section(section, images or {}) for section in report.sections]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(report.title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _verdict(report: Outline) -> str:
    failures = report.verdict["failures"]
    if report.verdict["pass"]:
        return '<p class="verdict pass">Verdict: PASS — every comparison is within tolerance.</p>'
    heading = f'<p class="verdict fail">Verdict: FAIL — {len(failures)} problem(s)</p>'
    return (
        heading
        + "\n<ul>"
        + "".join(f"<li><code>{escape(f)}</code></li>" for f in failures)
        + "</ul>"
    )


def _list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"


def _section(section: Section, images: dict[str, bytes]) -> str:
    parts = [f"<h2>{escape(section.title)}</h2>"]
    if section.bullets:
        parts.append(_list(section.bullets))
    parts += [_table(table) for table in section.tables]
    parts += [_figure(name, images[name]) for name in section.plots if name in images]
    return "\n".join(parts)


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
    rows = []
    for row in table.rows:
        style = f' class="{row.style}"' if row.style else ""
        rows.append(f"<tr{style}>" + "".join(_cell(cell) for cell in row.cells) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _cell(cell: Cell) -> str:
    if isinstance(cell, Status):
        return f'<td class="{"ok" if cell.ok else "bad"}">{escape(cell.text)}</td>'
    if isinstance(cell, tuple):
        tags = {"": "{}", "del": "<del>{}</del>", "ins": "<ins>{}</ins>"}
        return (
            "<td>" + " ".join(tags[run.change].format(escape(run.text)) for run in cell) + "</td>"
        )
    return f"<td>{escape(cell)}</td>"


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(name)}</figcaption></figure>"
    )
