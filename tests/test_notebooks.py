"""Notebook hygiene: no redefined helpers, no stale or weight-dependent stored outputs.

nbval (``make test``) re-executes every notebook; these checks cover what it cannot.
A notebook that trains its own model (09) carries the metadata flag
``{"vit_inspect": {"outputs": "trained here"}}`` and keeps all its outputs, pictures
included: they come from weights trained in the notebook itself, never from untrained ones.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import nbformat
import pytest

import vit_inspect

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KEEP_TAG = "nbval-check-output"
TRAINED_HERE = "trained here"  # notebook.metadata["vit_inspect"]["outputs"]: every output is kept


def keeps_all_outputs(notebook) -> bool:
    return notebook.metadata.get("vit_inspect", {}).get("outputs") == TRAINED_HERE


def package_names() -> set[str]:
    """Every function and class name defined anywhere in vit_inspect."""
    names = set()
    for info in pkgutil.iter_modules(vit_inspect.__path__):
        if info.name in ("__main__", "bench"):
            continue
        module = importlib.import_module(f"vit_inspect.{info.name}")
        names |= {n for n, v in vars(module).items()
                  if callable(v) and getattr(v, "__module__", "") == module.__name__}
    return names


def code_of(cell) -> str:
    """Cell source without IPython magics and shell escapes, which ast cannot parse."""
    return "\n".join("" if line.startswith(("%", "!")) else line for line in cell.source.splitlines())


def defined_names(notebook) -> set[str]:
    names = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            names |= {node.name for node in ast.walk(ast.parse(code_of(cell)))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return names


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_redefines_nothing_from_the_package(path):
    clash = defined_names(nbformat.read(path, as_version=4)) & package_names()
    assert not clash, f"{path.name} redefines {sorted(clash)}; import them from vit_inspect"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_are_only_weight_independent(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    keep_all = keeps_all_outputs(notebook)
    for index, cell in enumerate(code_cells):
        kept = keep_all or KEEP_TAG in cell.metadata.get("tags", [])
        assert kept or not cell.outputs, f"{path.name} code cell {index} stores outputs; run `make notebooks`"
        # a clean top-to-bottom run numbers code cell i as i + 1; anything else is stale
        expected_count = index + 1 if kept else None
        assert cell.execution_count == expected_count, f"{path.name} code cell {index}: stale execution count"
        for output in cell.outputs:
            if not keep_all:
                assert "image/png" not in output.get("data", {}), f"{path.name} cell {index} stores a picture"
            assert output.get("name") != "stderr", f"{path.name} cell {index} stores stderr"
            assert "UNTRAINED" not in str(output), f"{path.name} cell {index} stores untrained output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_title_prerequisite_and_one_imports_cell(path):
    cells = nbformat.read(path, as_version=4).cells
    intro, imports = cells[0], cells[1]
    assert intro.cell_type == "markdown" and intro.source.startswith("# ")
    assert "Prerequisite" in intro.source
    assert imports.cell_type == "code" and "import" in imports.source
    later_imports = [i for i, c in enumerate(cells[2:], 2)
                     if c.cell_type == "code" and any(isinstance(n, (ast.Import, ast.ImportFrom))
                                                      for n in ast.walk(ast.parse(code_of(c))))]
    assert not later_imports, f"{path.name}: imports outside the imports cell in cells {later_imports}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_a_notebook_that_trains_its_model_keeps_all_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    if keeps_all_outputs(notebook):
        code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        assert "train_vit(" in code, f"{path.name} keeps all outputs but trains no model of its own"
        assert any("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code"
                   for o in c.outputs), f"{path.name} keeps all outputs but stores no figure; run `make notebooks`"
