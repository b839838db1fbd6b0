"""The house: one module per notebook, a small public surface, tests named after modules, no import circles."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import shutil
import types
from pathlib import Path

import pytest

import vit_inspect
import vit_inspect.plotting

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_MODULES = {"patches": "01", "position_embeddings": "02", "attention_by_hand": "03",
                    "encoder_stack": "04", "classification_head": "05", "attention_maps": "06",
                    "from_scratch": "07", "huggingface": "08", "training": "09", "attention_explorer": "10",
                    "fine_tuning": "11",
                    "explanations": "12"}
INTERNALS = ("to_rgb", "discard_lowest", "fused_attention_flags", "reusable", "split_transform",
             "read_state_dict", "hub_reachable", "augment", "affine_matrices", "crop_transform", "trained_here_path")


def package_modules() -> dict[str, types.ModuleType]:
    names = [info.name for info in pkgutil.iter_modules(vit_inspect.__path__) if info.name != "__main__"]
    return {name: importlib.import_module(f"vit_inspect.{name}") for name in names}


def test_every_public_name_resolves_to_its_object_not_a_module():
    package_modules()  # importing a submodule sets a package attribute: it must not shadow a function
    assert vit_inspect.__all__ == sorted(set(vit_inspect.__all__))
    for name in vit_inspect.__all__:
        value = getattr(vit_inspect, name)
        assert not isinstance(value, types.ModuleType), f"vit_inspect.{name} is a module, not the function"


def test_public_functions_have_docstrings_and_return_types():
    for name in vit_inspect.__all__:
        value = getattr(vit_inspect, name)
        if inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), f"{name} has no docstring"
            assert "return" in value.__annotations__, f"{name} has no return type"


def test_internals_stay_in_their_modules():
    for name in INTERNALS:
        assert name not in vit_inspect.__all__
        with pytest.raises(AttributeError):
            getattr(vit_inspect, name)
    assert "discard_lowest" in vars(importlib.import_module("vit_inspect.attention_maps"))


def test_one_module_per_notebook_opens_with_its_notebook():
    modules = package_modules()
    notebooks = {path.stem for path in (ROOT / "notebooks").glob("*.ipynb")}
    for module, number in NOTEBOOK_MODULES.items():
        notebook = f"{number}_{module}"
        assert notebook in notebooks, f"{module}.py serves {notebook}, which does not exist"
        assert modules[module].__doc__.startswith(f"Notebook {notebook}:"), f"{module}.py must name its notebook"


def test_every_figure_comes_from_plotting():
    """Plot functions have one import path; only the CLI report draws its own composite figure."""
    elsewhere = [f"{name}.{fn}" for name, module in package_modules().items() if name != "plotting"
                 for fn, value in vars(module).items()
                 if fn.startswith("plot_") and inspect.isfunction(value) and value.__module__ == module.__name__]
    assert elsewhere == ["report.plot_report"]


def test_tests_are_named_after_modules():
    modules = set(package_modules()) | {"package", "notebooks", "data", "learned_claims", "docs"}
    for path in (ROOT / "tests").glob("test_*.py"):
        assert path.stem.removeprefix("test_") in modules, f"{path.name} names no module of vit_inspect"


# ---------------------------------------------------------------- the import graph

PACKAGE = ROOT / "vit_inspect"


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The package modules that ``source`` imports anywhere: at the top, inside functions, under TYPE_CHECKING.

    ``from . import x`` and ``from vit_inspect import x`` count as importing ``x`` when it is
    a module, else the package itself (``__init__``).
    """
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("vit_inspect.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else f"vit_inspect.{node.module}" if node.module else "vit_inspect"
            if node.level > 1 or not base.startswith("vit_inspect"):
                continue
            parts = base.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found |= {alias.name if alias.name in modules else "__init__" for alias in node.names}
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, from the source of every module in ``package``."""
    sources = {path.stem: path.read_text() for path in package.glob("*.py")}
    return {name: imported_modules(source, set(sources)) - {name} for name, source in sources.items()}


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as [a, b, ..., a] (a imports b ... imports a), or [] if there is none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return []
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported, path + [module])
            if cycle:
                return cycle
        done.add(module)
        return []

    return next((cycle for cycle in (visit(module, []) for module in sorted(graph)) if cycle), [])


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph(PACKAGE)
    assert {"weights", "training", "cli", "provenance", "hub", "small_vit"} <= set(graph)
    assert "small_vit" in graph["weights"] and "small_vit" in graph["training"], "the graph sees these imports"
    cycle = import_cycle(graph)
    assert not cycle, f"import circle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("planted", [
    "\n\ndef load():\n    from .weights import load_vit\n    return load_vit\n",  # inside a function
    "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vit_inspect.weights import LoadedViT\n",
    "\n\ndef load():\n    from . import weights\n    return weights\n",
    "\nimport vit_inspect.weights\n",
], ids=["function", "TYPE_CHECKING", "from . import", "absolute import"])
def test_mutation_a_planted_import_circle_is_caught(tmp_path, planted):
    """The check, on a copy of the package in which small_vit imports weights back (weights imports small_vit)."""
    copy = tmp_path / "vit_inspect"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert not import_cycle(import_graph(copy))
    (copy / "small_vit.py").write_text((copy / "small_vit.py").read_text() + planted)
    cycle = import_cycle(import_graph(copy))
    assert cycle and {"small_vit", "weights"} <= set(cycle), cycle
