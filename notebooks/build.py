"""Build the notebooks from their readable sources, execute them, and save them with their outputs.

Each notebook is written as a plain Python file in notebooks/src/, in the "percent" cell format
(the one jupytext and VS Code understand):

    # %% [markdown]
    # # A title
    # Some prose, every line behind "# ".

    # %%
    x = 1 + 1      # a code cell

`python notebooks/build.py` turns every source into notebooks/<name>.ipynb, runs it top to bottom in
a fresh kernel (working directory notebooks/) and writes it with its outputs, so the committed
notebooks show their figures on a code host. `python notebooks/build.py 03` rebuilds only the
notebooks whose name contains "03"; `--check` only compares the committed notebooks with their
sources. tests/test_notebooks.py uses the same functions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent
SOURCES = NOTEBOOKS / "src"
CELL_MARKER = "# %%"
MARKDOWN_MARKER = "# %% [markdown]"
CELL_TIMEOUT = 300          # seconds per cell when building (the tests use a tighter limit)
# After a cell finishes, nbclient waits at most this long for each of its outputs; on a busy machine
# the default (4 s) can run out and the outputs are then silently dropped. Raise instead of dropping.
IOPUB_TIMEOUT = 60
KERNEL = "python3"


def parse_source(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into cells: a list of ("markdown" | "code", cell text).

    Markdown lines lose their leading "# " (or a bare "#" on empty lines). Blank lines around a
    cell are dropped. Anything before the first marker (a module docstring, say) is ignored.
    """
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(CELL_MARKER):
            kind = "markdown" if line.strip() == MARKDOWN_MARKER else "code"
            cells.append((kind, []))
        elif cells:
            kind, lines = cells[-1]
            if kind == "markdown":
                if line.startswith("# "):
                    line = line[2:]
                elif line.strip() == "#":
                    line = ""
                elif line.strip():
                    raise ValueError(f"markdown line does not start with '# ': {line!r}")
            lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def make_notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """An unexecuted notebook with these cells and a Python 3 kernel."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": KERNEL}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in cells:
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        nb.cells.append(cell)
    return nb


def cells_of(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """The (kind, text) cells of a notebook, to compare with its source."""
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel with notebooks/ as working directory; raise on the first error."""
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            iopub_timeout=IOPUB_TIMEOUT, raise_on_iopub_timeout=True,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    # Cell ids are random per build; stable ids keep the diffs of rebuilt notebooks small.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def source_paths(patterns: list[str]) -> list[Path]:
    paths = sorted(SOURCES.glob("*.py"))
    if patterns:
        paths = [p for p in paths if any(pattern in p.stem for pattern in patterns)]
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="build only the notebooks whose name contains one of these")
    parser.add_argument("--check", action="store_true", help="only check that each .ipynb matches its source")
    args = parser.parse_args(argv)
    status = 0
    for path in source_paths(args.names):
        target = NOTEBOOKS / f"{path.stem}.ipynb"
        cells = parse_source(path.read_text())
        if args.check:
            if not target.exists() or cells_of(nbformat.read(target, as_version=4)) != cells:
                print(f"{target.name}: out of date with {path.relative_to(NOTEBOOKS)}")
                status = 1
            continue
        start = time.perf_counter()
        nb = execute(make_notebook(cells))
        nbformat.validate(nb)
        nbformat.write(nb, target)
        print(f"{target.name}: {time.perf_counter() - start:.1f} s, {target.stat().st_size / 1e6:.2f} MB")
    return status


if __name__ == "__main__":
    sys.exit(main())
