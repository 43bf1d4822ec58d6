"""The `nncompress` command line: a thin layer over `nncompress.api`, one module per command group.

Every command that produces figures prints a table and, with `--json PATH`, writes them as JSON.
To add a command: a module here that decorates functions with `@app.command(...)` (the shared
`app`, options and helpers are in `common.py`), imported below.
"""
from __future__ import annotations

import sys

from rich.markup import escape

from ..validate import UserError
# each module registers its commands; the import order is the order of `nncompress --help`
from . import model, compress, files, runtime  # noqa: F401, I001
from . import energy, sweep  # noqa: F401, I001  (issue 15 part B: energy estimate, Ray sweeps)
from . import run  # noqa: F401, I001  (issue 15 part A: nncompress run RECIPE.yaml)
from . import structured  # noqa: F401, I001  (issue 12 part A: nncompress slim)
from . import hardware  # noqa: F401, I001  (issue 12 part B: nncompress zeroskip)
from . import binary  # noqa: F401, I001  (issue 14: nncompress binarize)
from . import qat  # noqa: F401, I001  (issue 13 part A: nncompress qat)
from . import mixed  # noqa: F401, I001  (issue 13 part B: nncompress mixed-precision, fp8-train)
from . import miracle  # noqa: F401, I001  (issue 16: nncompress miracle)
from .common import app, console

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user-input errors (`UserError`, a missing file) become one clear line and exit
    code 2; any other exception is a bug and keeps its traceback."""
    try:
        app()
    except (UserError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
