"""Give notebooks an "Open in Colab" badge and a first cell that installs vit-inspect on Colab.

The repository address lives in ONE place, ``[project.urls] Repository`` in pyproject.toml;
this script writes it into the notebooks (and the Colab links of the README and the docs pages), so changing the
address (a fork, a course's copy) is: edit pyproject.toml, run this script.

- The badge goes into the first markdown cell, right under the title.
- The setup cell (tagged ``colab-setup``) comes right after that cell. On Colab, or wherever
  ``vit_inspect`` cannot be imported, it pip-installs the package from the repository - a
  plain, non-editable install, importable at once in the running kernel (an editable
  install is only picked up when Python starts) - together with the packages the
  notebook's imports cell needs beyond vit-inspect's own dependencies. On a machine where
  vit-inspect is installed it does nothing and prints nothing.
- A notebook whose metadata says ``{"vit_inspect": {"colab_widgets": true}}`` (the explorer,
  notebook 10) shows third-party widgets, which Colab draws only through its custom widget
  manager: its setup cell also switches that on, on Colab only.

    python scripts/colab_setup.py notebooks/*.ipynb                  # write badges and setup cells
    python scripts/colab_setup.py --readme README.md --readme docs/install.md notebooks/*.ipynb
    python scripts/colab_setup.py --check --readme README.md notebooks/*.ipynb   # exit 1 if out of date

``--readme`` may be given once per page: the README and every page of ``docs/`` that has Colab
links, ``git+`` installs or ``git clone`` lines.
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib.metadata
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BRANCH = "main"
SETUP_TAG = "colab-setup"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/")
GIT_ADDRESS = re.compile(r"(git\+|git clone )https://github\.com/[^/\s)\"']+/[^/\s)\"']+?(?=[\s)\"']|$)")


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``[project.urls] Repository`` of pyproject.toml, e.g. https://github.com/OWNER/NAME."""
    import tomllib  # Python 3.11+; this is a maintainer's script, run with the project's venv

    url = tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"].rstrip("/")
    if not re.fullmatch(r"https://github\.com/[^/\s]+/[^/\s]+", url):
        raise SystemExit(f"{pyproject}: [project.urls] Repository must be https://github.com/OWNER/NAME, got {url}")
    return url


def colab_url(repository: str, path_in_repo: str, branch: str = BRANCH) -> str:
    """The Colab address that opens ``path_in_repo`` from the repository on GitHub."""
    return f"https://colab.research.google.com/github/{repository.removeprefix('https://github.com/')}" \
           f"/blob/{branch}/{path_in_repo}"


def badge(url: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def install_spec(repository: str, extras: list[str] = ()) -> str:
    """What pip installs: the package (with ``extras``), non-editable, from the repository's default branch."""
    return f"vit-inspect{'[' + ','.join(extras) + ']' if extras else ''} @ git+{repository}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_names(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """Canonical distribution names that installing vit-inspect brings along."""
    import tomllib

    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {_canonical(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]) for requirement in requirements}


def _cell_tree(source: str) -> ast.Module:
    """A cell's syntax tree, IPython magics and shell lines left out."""
    return ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()))


def _optional_imports(tree: ast.Module) -> set[int]:
    """ids of the import statements under ``try: ... except ImportError`` (Colab's own modules, say)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers):
            optional |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return optional


def imported_modules(source: str) -> list[str]:
    """Top-level modules a cell needs to import (magics, shell lines and guarded optional imports skipped)."""
    tree = _cell_tree(source)
    optional, modules = _optional_imports(tree), []
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            modules += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module.split(".")[0])
    return sorted(set(modules))


def required_names(source: str) -> set[str]:
    """What the cell obtains through vit_inspect's ``require_<name>()`` (``transformers = require_transformers()``)."""
    return {node.func.id.removeprefix("require_") for node in ast.walk(_cell_tree(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("require_")}


def optional_extras(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, set[str]]:
    """pyproject's optional extras: name -> the canonical distribution names it brings (``hf`` -> {transformers})."""
    import tomllib

    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    return {name: {_canonical(re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0]) for item in items}
            for name, items in extras.items()}


def imports_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    setup = setup_index(notebook)
    first = 1 if setup is None else setup + 1
    return next(cell for cell in notebook.cells[first:] if cell.cell_type == "code")


def vit_inspect_extras(notebook: nbformat.NotebookNode) -> list[str]:
    """vit-inspect's extras the imports cell needs: those whose packages it imports or ``require_...()``s."""
    source = imports_cell(notebook).source
    wanted = {_canonical(name) for name in imported_modules(source)} | {_canonical(n) for n in required_names(source)}
    return sorted(extra for extra, packages in optional_extras().items() if packages & wanted)


# Import names whose pip name differs, so a notebook's needs are known on any machine (CI has none of these).
PIP_NAMES = {
    "sklearn": "scikit-learn",
    "PIL": "Pillow",
    "cv2": "opencv-python",
    "yaml": "PyYAML",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "attr": "attrs",
    "Crypto": "pycryptodome",
    "serial": "pyserial",
    "usb": "pyusb",
    "jwt": "PyJWT",
    "dotenv": "python-dotenv",
    "magic": "python-magic",
    "fitz": "PyMuPDF",
    "docx": "python-docx",
}


def pip_name(module: str) -> str:
    """The pip name of top-level ``module``: the table above, else the installed distribution, else the name itself."""
    if module in PIP_NAMES:
        return PIP_NAMES[module]
    found = importlib.metadata.packages_distributions().get(module)
    return found[0] if found else module


def extra_packages(notebook: nbformat.NotebookNode, name: str) -> list[str]:
    """pip names of what the imports cell needs beyond the standard library and vit-inspect's dependencies and extras."""
    covered, extras = dependency_names(), set()
    covered |= {package for extra in vit_inspect_extras(notebook) for package in optional_extras()[extra]}
    for module in imported_modules(imports_cell(notebook).source):
        if module in sys.stdlib_module_names or module == "vit_inspect":
            continue
        package = pip_name(module)
        if _canonical(package) not in covered:
            extras.add(package)
    return sorted(extras)


COLAB_WIDGETS = "colab_widgets"  # notebook.metadata["vit_inspect"][COLAB_WIDGETS]: it shows third-party widgets
_WIDGET_MANAGER = (
    "\n\n"
    'if "google.colab" in sys.modules:  # third-party widgets (the clickable picture) need Colab\'s own manager\n'
    "    from google.colab import output\n"
    "    output.enable_custom_widget_manager()")


def needs_custom_widgets(notebook: nbformat.NotebookNode) -> bool:
    """Whether the notebook's metadata asks for Colab's custom widget manager."""
    return bool(notebook.get("metadata", {}).get("vit_inspect", {}).get(COLAB_WIDGETS))


def setup_cell_source(repository: str, packages: list[str], extras: list[str] = (),
                      custom_widgets: bool = False) -> str:
    """The setup cell: installs only on Colab or where vit_inspect is missing; silent otherwise.

    ``custom_widgets``: on Colab, also enable its custom widget manager (a no-op elsewhere).
    """
    spec = ", ".join(f'"{item}"' for item in [install_spec(repository, extras), *packages])
    return (
        "# Colab setup: on Colab, or wherever vit-inspect is missing, install it (and what this notebook needs)\n"
        "# from its repository. Where vit-inspect is installed, this cell does nothing.\n"
        "import importlib.util\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules or importlib.util.find_spec("vit_inspect") is None:\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",\n'
        f"                    {spec}], check=True)\n"
        "    importlib.invalidate_caches()  # a plain install is importable at once, no restart needed"
        + (_WIDGET_MANAGER if custom_widgets else ""))


def setup_index(notebook: nbformat.NotebookNode) -> int | None:
    """Index of the cell tagged ``colab-setup``, or None."""
    return next((i for i, cell in enumerate(notebook.cells)
                 if SETUP_TAG in cell.get("metadata", {}).get("tags", [])), None)


def with_badge(source: str, url: str | None) -> str:
    """The first cell's text with the badge (or, for ``url=None``, without any) under the title line."""
    source = BADGE.sub("", source)
    source = re.sub(r"\n{3,}", "\n\n", source).strip("\n")
    if url is None:
        return source
    title, _, rest = source.partition("\n")
    return f"{title}\n\n{badge(url)}\n\n{rest.lstrip(chr(10))}".rstrip("\n")


def with_colab(notebook: nbformat.NotebookNode, path_in_repo: str | None, repository: str,
               name: str = "notebook") -> nbformat.NotebookNode:
    """A copy with the badge for ``path_in_repo`` (None: no badge) and an up-to-date setup cell."""
    notebook = copy.deepcopy(notebook)
    intro = notebook.cells[0]
    if intro.cell_type != "markdown":
        raise SystemExit(f"{name}: the first cell must be the markdown title cell")
    intro.source = with_badge(intro.source, None if path_in_repo is None else colab_url(repository, path_in_repo))
    source = setup_cell_source(repository, extra_packages(notebook, name), vit_inspect_extras(notebook),
                               needs_custom_widgets(notebook))
    index = setup_index(notebook)
    if index is None:
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]})
        notebook.cells.insert(1, cell)
    else:
        notebook.cells[index].source = source
    return notebook


def path_in_repo(path: Path) -> str | None:
    """``path`` relative to the repository root, or None when it lies outside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None


def with_readme_links(text: str, repository: str) -> str:
    """README text whose Colab links, ``git+`` installs and ``git clone`` lines name ``repository``."""
    text = COLAB_LINK.sub(colab_url(repository, ""), text)
    return GIT_ADDRESS.sub(lambda match: match.group(1) + repository, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Colab badges and setup cells from pyproject's repository address.")
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--readme", type=Path, action="append", default=[],
                        help="also rewrite this page's Colab links (README.md, docs/*.md; may be repeated)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    repository, stale = repository_url(), []
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        updated = with_colab(notebook, path_in_repo(path), repository, path.name)
        if updated != notebook:
            stale.append(str(path))
            if not args.check:
                nbformat.write(updated, path)
    for page in args.readme:
        text = page.read_text()
        if with_readme_links(text, repository) != text:
            stale.append(str(page))
            if not args.check:
                page.write_text(with_readme_links(text, repository))
    verb = "out of date" if args.check else "updated"
    print(f"{verb}: {', '.join(stale)}" if stale else f"all up to date with {repository}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
