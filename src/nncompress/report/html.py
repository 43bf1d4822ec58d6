"""`report.html`: one self-contained page (inline CSS, figures embedded as base64 PNG data URIs, no
scripts, no external assets), so it can be mailed or archived as a single file."""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .stages import StageRecord
from .tables import STAGE_LEGEND, Table, layer_table, stage_table, summary_line

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.summary { font-size: 1.1em; font-weight: 600; background: #eef5ff; padding: 0.6em 0.9em; border-radius: 4px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; }
th { background: #f3f3f3; } td { text-align: right; } td:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


def html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embedded_png(path: Path, alt: str) -> str:
    """An <img> whose source is the PNG file itself as a base64 data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def render_html(title: str, stages: list[StageRecord], figures: list[tuple[str, Path]],
                notes: list[str] = ()) -> str:
    """The whole report as one HTML document (same content as `render_markdown`)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', '<link rel="icon" href="data:,">',
             f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{escape(title)}</h1>", f'<p class="summary">{escape(summary_line(stages))}</p>']
    if notes:
        parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    parts += ["<h2>Stages</h2>", html_table(stage_table(stages)), f"<p>{escape(STAGE_LEGEND)}</p>"]
    for caption, path in figures:
        parts += [f"<h2>{escape(caption)}</h2>",
                  f"<figure>{embedded_png(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"]
    for stage in stages:
        parts += [f"<h2>Layers after stage <code>{escape(stage.name)}</code></h2>", html_table(layer_table(stage))]
    parts += ["</body>", "</html>"]
    return "\n".join(parts)
