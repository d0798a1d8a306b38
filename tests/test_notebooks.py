"""The notebooks run top to bottom in a fresh kernel, and the committed ones are their executed sources.

* `test_notebook_runs`: each notebooks/*.ipynb is executed with nbclient (fresh kernel, working
  directory notebooks/, a time limit per cell); an error in any cell, a failed assertion included,
  fails the test. Every notebook checks itself against PyTorch or published numbers with asserts.
* `test_notebook_runs_without_shared_data`: the notebooks that load real weights still run when
  ../shared/data is absent and the Hub is offline: a reader without them gets random weights, a
  synthetic image and a visible note saying so (and the checks must hold for random weights too).
* `test_committed_notebook`: each committed .ipynb has exactly the cells of notebooks/src/<name>.py
  (rebuild with `python notebooks/build.py`), was executed (outputs kept, so its figures show on a
  code host) and stays under 2 MB.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
_spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

NAMES = [path.stem for path in build.source_paths([])]
CELL_TIMEOUT = 120            # seconds; a whole notebook takes well under a minute
MAX_BYTES = 2_000_000
# Notebooks that load real weights (the others use random weights or none in any case).
USES_REAL_WEIGHTS = [name for name in NAMES if "load_checkpoint" in (NOTEBOOKS / "src" / f"{name}.py").read_text()]


def read_committed(name: str) -> nbformat.NotebookNode:
    path = NOTEBOOKS / f"{name}.ipynb"
    assert path.is_file(), f"{path.name} is missing: run `python notebooks/build.py {name}`"
    return nbformat.read(path, as_version=4)


def outputs(nb: nbformat.NotebookNode) -> list:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in outputs(nb))


def printed_text(nb: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in outputs(nb))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name):
    nb = build.execute(copy.deepcopy(read_committed(name)), timeout=CELL_TIMEOUT)
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    assert figures(nb) >= 1, f"{name} draws no figure"
    assert any("assert" in cell.source for cell in nb.cells if cell.cell_type == "code"), f"{name} checks nothing"


@pytest.mark.parametrize("name", USES_REAL_WEIGHTS)
def test_notebook_runs_without_shared_data(name, tmp_path, monkeypatch):
    # The kernel inherits this environment: no shared data, no network, an empty cache of Hub weights.
    monkeypatch.setenv("MOBILENET_NP_SHARED_DATA", str(tmp_path / "absent"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MOBILENET_NP_CACHE", str(tmp_path / "cache"))
    nb = build.execute(copy.deepcopy(read_committed(name)), timeout=CELL_TIMEOUT)
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    assert "RANDOM WEIGHTS" in printed_text(nb), f"{name} does not tell the reader that its weights are random"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = read_committed(name)
    nbformat.validate(nb)
    expected = build.parse_source((NOTEBOOKS / "src" / f"{name}.py").read_text())
    assert build.cells_of(nb) == expected, f"{path.name} is out of date: run `python notebooks/build.py {name}`"
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), f"{path.name} was saved unexecuted"
    assert not [o for o in outputs(nb) if o.output_type == "error"], f"{path.name} was saved with an error"
    assert figures(nb) >= 1, f"{path.name} was saved without its figures"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
