"""`report.md`: the run's tables in GitHub Markdown, figures linked as PNG files beside it."""
from __future__ import annotations

from pathlib import Path

from .stages import StageRecord
from .tables import STAGE_LEGEND, Table, layer_table, stage_table, summary_line


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(_escape(h) for h in headers) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |"]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(title: str, stages: list[StageRecord], figures: list[tuple[str, Path]], out_dir: Path,
                    notes: list[str] = ()) -> str:
    """The whole report: summary line, stage table, figures (relative links), one layer table per stage."""
    parts = [f"# {title}", "", f"**{summary_line(stages)}**", ""]
    parts += [f"- {note}" for note in notes] + ([""] if notes else [])
    parts += ["## Stages", "", markdown_table(stage_table(stages)), "", STAGE_LEGEND, ""]
    for caption, path in figures:
        parts += [f"## {caption}", "", f"![{caption}]({path.relative_to(out_dir).as_posix()})", ""]
    for stage in stages:
        parts += [f"## Layers after stage `{stage.name}`", "", markdown_table(layer_table(stage)), ""]
    return "\n".join(parts)
