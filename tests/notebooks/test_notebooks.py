"""Every notebook under notebooks/ runs top to bottom in its tiny mode (papermill injects MODE = "tiny"
after the cell tagged ``parameters``), uses only the public API, and is committed without outputs."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")   # the notebooks extra (dev installs it); nbformat comes with it
import nbformat  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def run_notebook(path: Path, out: Path, **parameters) -> nbformat.NotebookNode:
    """Execute ``path`` (from its own folder, as a user opens it) with ``parameters``; the executed copy
    goes to ``out``. A cell that raises raises PapermillExecutionError here."""
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3", cwd=str(path.parent),
                               progress_bar=False, execution_timeout=600)
    return nbformat.read(out, as_version=4)


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def python_source(cell) -> str:
    """The cell's Python: IPython magics (``%matplotlib inline``) left out."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def test_there_are_notebooks_and_each_has_one_parameters_cell_defaulting_to_the_real_model():
    assert [p.name for p in NOTEBOOKS][:2] == ["01_explore_the_front.ipynb", "02_three_objectives.ipynb"]
    for path in NOTEBOOKS:
        tagged = [c for c in code_cells(path) if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert re.search(r'^MODE = "real"', tagged[0].source, re.M), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_runs_top_to_bottom_in_tiny_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PARSONA_CACHE", str(tmp_path / "cache"))   # the kernel inherits it: its own empty cache
    executed = run_notebook(path, tmp_path / path.name, MODE="tiny")
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"


def test_a_notebook_whose_cell_raises_fails_the_run(tmp_path):
    """Sabotage: the first notebook with a raising cell right after its parameters fails, naming the error."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell('raise RuntimeError("sabotaged")'))
    broken = tmp_path / NOTEBOOKS[0].name
    nbformat.write(nb, broken)
    with pytest.raises(papermill.PapermillExecutionError, match="sabotaged"):
        run_notebook(broken, tmp_path / "out.ipynb", MODE="tiny")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path):
    """Held-out rows are licence-restricted: nothing a run printed is committed (strip outputs before committing:
    ``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``)."""
    for cell in code_cells(path):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: {cell.source[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_use_only_the_public_api(path):
    """No library code lives in a notebook (no class definitions, no ``from x import _private``, nothing from
    bench/ or tests/) and every ``from`` import resolves in the installed package."""
    for cell in code_cells(path):
        tree = ast.parse(python_source(cell))
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)], f"{path.name} defines a class"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] not in ("bench", "tests"), f"{path.name} imports {node.module}"
                assert not any(part.startswith("_") for part in node.module.split(".")), node.module
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path.name} imports private {node.module}.{alias.name}"
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        f"{path.name}: {node.module} has no {alias.name}"
