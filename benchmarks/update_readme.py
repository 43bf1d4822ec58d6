"""Copy the latest tables from benchmarks/results/*.md into README.md, between markers
`<!-- results:NAME[:K] -->` and `<!-- /results -->` (K = which table of the file, from 0).

Usage: python benchmarks/update_readme.py
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- results:([\w-]+)(?::(\d+))? -->\n.*?<!-- /results -->", re.S)


def tables(text: str) -> list[str]:
    """The markdown tables of a results file, in order."""
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    if current:
        found.append("\n".join(current))
    return found


def main() -> None:
    readme = ROOT / "README.md"

    def fill(match: re.Match) -> str:
        name, index = match.group(1), int(match.group(2) or 0)
        table = tables((ROOT / "benchmarks" / "results" / f"{name}.md").read_text())[index]
        tag = f"{name}:{index}" if match.group(2) else name
        return f"<!-- results:{tag} -->\n{table}\n<!-- /results -->"

    readme.write_text(MARKER.sub(fill, readme.read_text()))
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
