"""The house: one module per notebook, a small public surface, tests named after modules."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from pathlib import Path

import pytest

import vit_inspect
import vit_inspect.plotting

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_MODULES = {"patches": "01", "position_embeddings": "02", "attention_by_hand": "03",
                    "encoder_stack": "04", "classification_head": "05", "attention_maps": "06",
                    "from_scratch": "07", "huggingface": "08", "training": "09", "attention_explorer": "10",
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
    modules = set(package_modules()) | {"package", "notebooks", "data", "learned_claims"}
    for path in (ROOT / "tests").glob("test_*.py"):
        assert path.stem.removeprefix("test_") in modules, f"{path.name} names no module of vit_inspect"
