"""Notebook hygiene: no redefined helpers, no stale or weight-dependent stored outputs, asserts with messages,
learned-claim asserts that random weights cannot pass; the Colab cell.

nbval (``make test``) re-executes every notebook; these checks cover what it cannot.
A notebook that trains its own model (09) carries the metadata flag
``{"vit_inspect": {"outputs": "trained here"}}`` and keeps all its outputs, pictures
included: they come from weights trained in the notebook itself, never from untrained ones.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import vit_inspect
from vit_inspect import (DEFAULT_MODEL, TrainConfig, create_untrained, load_dataset, load_vit, save_trained,
                         save_weights, shipped_weights, training_metadata, untrained_like)
from vit_inspect.homework import notebook_client
from vit_inspect.weights import WEIGHTS_ENV

from .homework_notebooks import solution_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KEEP_TAG = "nbval-check-output"
TRAINED_HERE = "trained here"  # notebook.metadata["vit_inspect"]["outputs"]: every output is kept


def keeps_all_outputs(notebook) -> bool:
    return notebook.metadata.get("vit_inspect", {}).get("outputs") == TRAINED_HERE


def claims_on_digits(notebook) -> bool:
    """09 and 11 train their model here, 12 says so in its metadata: their learned claims are about the digits ViT."""
    return keeps_all_outputs(notebook) or notebook.metadata.get("vit_inspect", {}).get("claims_on") == "digits"

SETUP_TAG = "colab-setup"  # the Colab setup cell (scripts/colab_setup.py), allowed before the imports cell


def load_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab_setup = load_script("colab_setup")


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
    first = 2 if SETUP_TAG in cells[1].metadata.get("tags", []) else 1  # the Colab setup cell may come first
    intro, imports = cells[0], cells[first]
    assert intro.cell_type == "markdown" and intro.source.startswith("# ")
    assert "Prerequisite" in intro.source
    assert imports.cell_type == "code" and "import" in imports.source
    later_imports = [i for i, c in enumerate(cells[first + 1:], first + 1)
                     if c.cell_type == "code" and any(isinstance(n, (ast.Import, ast.ImportFrom))
                                                      for n in ast.walk(ast.parse(code_of(c))))]
    assert not later_imports, f"{path.name}: imports outside the imports cell in cells {later_imports}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_a_notebook_that_trains_its_model_keeps_all_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    if keeps_all_outputs(notebook):
        code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        assert "train_vit(" in code or "fine_tune(" in code, f"{path.name} keeps all outputs but trains no model of its own"
        assert any("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code"
                   for o in c.outputs), f"{path.name} keeps all outputs but stores no figure; run `make notebooks`"

# ---------------------------------------------------------------- Colab: badge and setup cell

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_and_setup_cell_follow_pyproject(path):
    """Every notebook opens with the badge and the setup cell that scripts/colab_setup.py writes from [project.urls]."""
    notebook = nbformat.read(path, as_version=4)
    fix = f"run python scripts/colab_setup.py {path.relative_to(ROOT)}"
    assert "Open In Colab" in notebook.cells[0].source, f"{path.name}: no Colab badge; {fix}"
    assert colab_setup.setup_index(notebook) == 1, f"{path.name}: the Colab setup cell must be the first code cell; {fix}"
    repository = colab_setup.repository_url()
    assert colab_setup.with_colab(notebook, colab_setup.path_in_repo(path), repository) == notebook, \
        f"{path.name}: badge or setup cell out of date; {fix}"


def test_colab_setup_leaves_guarded_imports_and_installs_the_extras_a_notebook_requires():
    """Colab's own widget manager (notebook 10) is no package to install; require_transformers() (notebook 08) is."""
    notebook = solution_notebook()
    notebook.cells[1].source = ("try:  # Colab only\n    from google.colab import output\n"
                                "    output.enable_custom_widget_manager()\nexcept ImportError:\n    pass\n"
                                + notebook.cells[1].source + "\nfrom vit_inspect import require_transformers\n"
                                "transformers = require_transformers()")
    setup = colab_setup.with_colab(notebook, None, "https://github.com/someone/fork").cells[1]
    assert '["vit-inspect[hf] @ git+https://github.com/someone/fork"]' in setup.source.replace(",\n" + " " * 20, ", ") \
        or '"vit-inspect[hf] @ git+https://github.com/someone/fork"], check=True)' in setup.source, setup.source
    assert "google" not in setup.source.split("sys.modules")[-1], "nothing is installed for google.colab"
    assert colab_setup.imported_modules("try:\n    import google.colab\nexcept ModuleNotFoundError:\n    pass") == []
    assert colab_setup.imported_modules("try:\n    import numpy\nexcept KeyError:\n    pass") == ["numpy"]


def test_notebook_10_enables_colabs_widget_manager_in_its_setup_cell_and_rerunning_the_script_keeps_it():
    notebook = nbformat.read(ROOT / "notebooks" / "10_attention_explorer.ipynb", as_version=4)
    assert colab_setup.needs_custom_widgets(notebook), "notebook 10's metadata asks for the widget manager"
    setup = notebook.cells[1]
    assert SETUP_TAG in setup.metadata.get("tags", []) and "enable_custom_widget_manager()" in setup.source
    again = colab_setup.with_colab(notebook, None, "https://github.com/someone/fork").cells[1].source
    assert "output.enable_custom_widget_manager()" in again, "re-running scripts/colab_setup.py keeps the line"
    notebook.metadata["vit_inspect"].pop(colab_setup.COLAB_WIDGETS)
    plain = colab_setup.with_colab(notebook, None, "https://github.com/someone/fork").cells[1].source
    assert "enable_custom_widget_manager" not in plain, "only notebooks that ask for it get it"


def test_the_widget_manager_line_runs_on_colab_only(monkeypatch):
    source = colab_setup.setup_cell_source("https://github.com/someone/fork", [], custom_widgets=True)
    enabled = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: None)
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    exec(compile(source, "setup cell", "exec"), {})
    assert enabled == [True], "on Colab the custom widget manager is switched on"
    monkeypatch.delitem(sys.modules, "google.colab")
    exec(compile(source, "setup cell", "exec"), {})
    assert enabled == [True], "outside Colab the line does nothing"


def test_readme_and_docs_colab_links_follow_pyproject():
    """The README's Colab links, the docs' Colab install line, and every address in README.md and docs/*.md."""
    repository = colab_setup.repository_url()
    readme, install = (ROOT / "README.md").read_text(), (ROOT / "docs" / "install.md").read_text()
    assert colab_setup.colab_url(repository, "notebooks/01_patches.ipynb") in readme, "the README opens 01 in Colab"
    assert f"git+{repository}" in install, "docs/install.md: the %pip line for a Colab notebook of one's own"
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert colab_setup.with_readme_links(text, repository) == text, \
            f"run python scripts/colab_setup.py --readme {page.relative_to(ROOT)}"


def test_colab_setup_puts_badge_under_the_title_and_the_cell_before_the_imports():
    notebook = solution_notebook()
    notebook.cells[1].source += "\nimport skimage  # scikit-image: not one of vit-inspect's dependencies"
    repository = "https://github.com/someone/fork"
    once = colab_setup.with_colab(notebook, "homework/01_x.ipynb", repository)
    assert colab_setup.with_colab(once, "homework/01_x.ipynb", repository) == once, "running it twice changes nothing"
    title, _, rest = once.cells[0].source.partition("\n\n")
    assert title == "# Homework fixture" and rest.startswith(
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        "(https://colab.research.google.com/github/someone/fork/blob/main/homework/01_x.ipynb)")
    setup = once.cells[1]
    assert setup.metadata["tags"] == [SETUP_TAG] and once.cells[2].source == notebook.cells[1].source
    assert '"vit-inspect @ git+https://github.com/someone/fork", "scikit-image"]' in setup.source
    moved = colab_setup.with_colab(once, None, "https://github.com/other/place")
    assert "Open In Colab" not in moved.cells[0].source and "git+https://github.com/other/place" in moved.cells[1].source
    assert sum(SETUP_TAG in c.metadata.get("tags", []) for c in moved.cells) == 1


def test_colab_setup_knows_pip_names_without_the_packages_installed(monkeypatch):
    """CI installs requirements.txt only: skimage's pip name comes from the script's table, not from this machine;
    sklearn and PIL are vit-inspect's own dependencies, so nothing is added for them."""
    monkeypatch.setattr(colab_setup.importlib.metadata, "packages_distributions", lambda: {})  # nothing installed
    monkeypatch.setitem(sys.modules, "skimage", None)  # and importing skimage fails, as in CI
    notebook = solution_notebook()
    notebook.cells[1].source += "\nimport skimage\nimport sklearn\nimport cv2\nimport PIL\nimport somepackage"
    setup = colab_setup.with_colab(notebook, None, "https://github.com/someone/fork").cells[1].source
    assert '"opencv-python", "scikit-image", "somepackage"]' in setup.replace(",\n" + " " * 20, ", "), setup
    assert [colab_setup.pip_name(m) for m in ("sklearn", "PIL", "yaml", "skimage", "cv2", "unknown_x")] == \
        ["scikit-learn", "Pillow", "PyYAML", "scikit-image", "opencv-python", "unknown_x"]


def test_colab_setup_cell_installs_from_the_repository_on_colab(monkeypatch):
    repository = colab_setup.repository_url()
    source = colab_setup.setup_cell_source(repository, [])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(source, "setup cell", "exec"), {})
    (command, kwargs), = calls
    assert command[:5] == [sys.executable, "-m", "pip", "install", "--quiet"] and kwargs == {"check": True}
    assert command[5:] == [f"vit-inspect @ git+{repository}"], "a plain install from the repository"
    assert not {"-e", "--editable"} & set(command), "an editable install is not importable until a restart"


def test_colab_setup_cell_does_nothing_on_a_local_install(tmp_path):
    """Executed in a kernel where vit-inspect is installed: it runs no command and prints nothing."""
    shim = ("import subprocess\n_calls, _saved = [], {}\n"
            "for _name in ('run', 'call', 'check_call', 'check_output', 'Popen'):\n"
            "    _saved[_name] = getattr(subprocess, _name)\n"
            "    setattr(subprocess, _name, lambda *a, **k: _calls.append(a))\n")
    report = "for _name, _f in _saved.items():\n    setattr(subprocess, _name, _f)\nprint(len(_calls))"
    setup = colab_setup.setup_cell_source(colab_setup.repository_url(), ["scikit-learn"])
    notebook = new_notebook(cells=[new_markdown_cell("# t"), new_code_cell(shim), new_code_cell(setup),
                                   new_code_cell(report)])
    notebook_client(notebook, tmp_path / "t.ipynb", timeout=120).execute()
    assert notebook.cells[2].outputs == [], "the setup cell printed something locally"
    assert [o.get("text") for o in notebook.cells[3].outputs] == ["0\n"], "the setup cell ran a command locally"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prerequisite_names_an_existing_notebook(path):
    intro = nbformat.read(path, as_version=4).cells[0].source
    named = re.search(r"Prerequisite: (?:none|notebook (\w+))", intro)
    assert named, f"{path.name}: the Prerequisite line names 'none' or 'notebook NN_name'"
    assert named.group(1) is None or named.group(1) in {p.stem for p in NOTEBOOKS}, \
        f"{path.name}: prerequisite {named.group(1)} does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_assert_says_what_should_hold(path):
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            bare = [node.lineno for node in ast.walk(ast.parse(code_of(cell)))
                    if isinstance(node, ast.Assert) and node.msg is None]
            assert not bare, f"{path.name} cell {index}: assert without a message on line(s) {bare}"


LEARNED_CLAIM = "if provenance.trained:"


WRONG_CLAIMS = [  # (notebook, text) that issue 18 found wrong; each was replaced by what the notebook now shows
    ("04_encoder_stack.ipynb", "ViT-B uses the exact GELU"),  # the JAX ViT uses flax's tanh default; timm the erf form
    ("06_attention_maps.ipynb", "+-1/sqrt(196) = +-0.07 (one standard error)"),  # neighbouring cells are correlated
    ("06_attention_maps.ipynb", "most of the image, while others attend to small regions"),  # two sources in one quote
    ("01_patches.ipynb", "course's einops pattern `rearrange(x, 'b c (h s1) (w s2) -> b (h w) (c s1 s2)')`"),
    ("09_training.ipynb", "from 43 writers"),  # scikit-learn ships UCI's test part: 13 writers
]


@pytest.mark.parametrize("name, text", WRONG_CLAIMS, ids=[f"{n[:2]}: {t[:30]}" for n, t in WRONG_CLAIMS])
def test_claims_found_wrong_are_not_made_again(name, text):
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    flat = " ".join(" ".join(cell.source for cell in notebook.cells).split())
    assert " ".join(text.split()) not in flat, f"{name} says again: {text}"


CLAIMS_PAGE = ROOT / "docs" / "learned-claims.md"
CLAIM_ID = re.compile(r"^# learned claim ([0-9]{2}-[a-z0-9-]+): what it rests on is in docs/learned-claims\.md$", re.M)


def pretrained_claim_cells() -> dict[str, list[str]]:
    """{"NN_name.ipynb cell i": the learned-claim IDs it names} for every gated cell of the ViT-B/16 notebooks."""
    cells = {}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        if claims_on_digits(notebook):
            continue  # 09, 11, 12 study the digits ViT; test_learned_claims.py checks those claims
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and LEARNED_CLAIM in cell.source:
                cells[f"{path.name} cell {index}"] = CLAIM_ID.findall(cell.source)
    return cells


def claims_table() -> dict[str, str]:
    """{ID: its row} of the table in docs/learned-claims.md."""
    rows = [line for line in CLAIMS_PAGE.read_text().splitlines() if re.match(r"^\| `[0-9]{2}-", line)]
    return {re.match(r"^\| `([^`]+)`", row).group(1): row for row in rows}


def test_every_learned_claim_about_the_pretrained_model_is_in_the_claims_table():
    """Each gated cell of the ViT-B/16 notebooks (01-08, 10) names one claim ID; the table has exactly those IDs, each with a source column."""
    cells, table = pretrained_claim_cells(), claims_table()
    assert cells, "the ViT-B/16 notebooks make learned claims"
    for cell, ids in cells.items():
        assert len(ids) == 1, f"{cell}: a learned-claim cell starts with one '# learned claim ID: ...' comment"
    named = [ids[0] for ids in cells.values()]
    assert len(set(named)) == len(named), "every claim has its own ID"
    assert set(named) == set(table), (f"in the notebooks, not in docs/learned-claims.md: {set(named) - set(table)}; "
                                      f"in the table, in no notebook: {set(table) - set(named)}")
    for claim, row in table.items():
        notebook = claim[:2]
        assert any(cell.startswith(notebook) and ids == [claim] for cell, ids in cells.items()), \
            f"{claim}: its ID says notebook {notebook}"
        columns = [column.strip() for column in row.strip("|").split("|")]
        assert len(columns) == 5 and all(columns), f"{claim}: ID, notebook, claim, threshold, source - none empty"
        assert "unsourced" in columns[4] or re.search(r"ViT-[BL]/\d+|the pinned tag", columns[4]), \
            f"{claim}: name the weights the published figure is for, or say 'unsourced'"


@pytest.fixture(scope="module")
def random_weights_marked_trained(tmp_path_factory):
    """Seeded random ViT-B/16 weights in a file that claims to be trained: what a wrong download would look like."""
    folder = tmp_path_factory.mktemp("random-but-trained")
    return save_weights(create_untrained(DEFAULT_MODEL, seed=0), folder / "model.safetensors", untrained=False)


@pytest.fixture(scope="module")
def random_digits_weights_marked_trained(tmp_path_factory):
    """Seeded random weights of the small digits ViT in a `vit-inspect train` file that claims a trained model.

    What a failed training run, saved anyway, would look like: the weights a notebook that trains its own model
    (09) studies when VIT_INSPECT_WEIGHTS names such a file.
    """
    folder = tmp_path_factory.mktemp("random-digits-but-trained")
    info = training_metadata(shipped_weights("digits"))
    random = untrained_like(load_vit(weights="digits").model, seed=1)
    return save_trained(random, folder / "vit_digits.safetensors", load_dataset("digits", split_seed=info["split_seed"]),
                        TrainConfig(**info["train_config"]), info["test_accuracy"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_learned_claims_fail_on_random_weights_marked_trained(path, request, monkeypatch):
    """Every cell with a learned-claim assert must fail, with its message, when random weights pretend to be trained.

    Each such cell holds one learned claim, so none hides behind another; every other cell still runs.
    A notebook that trains its own model, or whose claims are about the digits ViT (metadata
    ``{"vit_inspect": {"claims_on": "digits"}}``, 12), gets random weights of that model's architecture.
    """
    notebook = nbformat.read(path, as_version=4)
    digits = claims_on_digits(notebook)
    fixture = "random_digits_weights_marked_trained" if digits else "random_weights_marked_trained"
    monkeypatch.setenv(WEIGHTS_ENV, str(request.getfixturevalue(fixture)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    NotebookClient(notebook, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if LEARNED_CLAIM in cell.source:
            assert cell.source.count("assert ") == 1, f"{path.name} cell {index}: one learned claim per cell"
            assert errors and errors[0].ename == "AssertionError", f"{path.name} cell {index}: random weights pass"
            assert "these weights do not show" in errors[0].evalue and "are they trained?" in errors[0].evalue, \
                f"{path.name} cell {index}: the message must say what was expected and ask if the weights are trained"
        else:
            assert not errors, f"{path.name} cell {index} fails on weights marked trained: {errors[0].evalue[:200]}"
