"""The README and the documentation site: a short README, a site that builds offline and works in a browser.

The site is built once (from the committed notebooks, not executed: seconds) and every page is
opened in one headless-Chromium run: every link inside the site resolves (page and anchor), every
image renders, nothing loads from another host, and the API page lists every public name.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

import vit_inspect

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WORKFLOW = ROOT / ".github" / "workflows" / "docs.yml"
README_LIMIT = 10_240  # bytes: a newcomer reads it in two minutes
# paths outside the repository, spelled in two parts so that this file does not name them itself
OUTSIDE = ("../" + "shared", "LECTURE" + ".md", "/work" + "/")


def load_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_docs = load_script("build_docs")


# ---------------- the README


def test_readme_is_short_and_starts_with_where_to_start():
    readme = (ROOT / "README.md").read_text()
    size = len(readme.encode())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move the detail into docs/"
    headings = re.findall(r"^## (.+)$", readme, flags=re.MULTILINE)
    assert headings[:2] == ["Start here", "The two commands"], headings
    assert "make demo" in readme and "make test" in readme and "pip install" in readme


def notebook_rows(readme: str) -> list[str]:
    """The notebooks of the README's "Start here" table, in order."""
    section = readme.split("## Start here", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| \[`(\d\d_\w+)`\]\(notebooks/\1\.ipynb\) \|", section, flags=re.MULTILINE)


def nav_notebooks() -> list[str]:
    """The notebooks in mkdocs.yml's nav, in order."""
    return [Path(p).stem for p in re.findall(r"^\s+- [^:]+: notebooks/(\S+\.ipynb)$",
                                               (ROOT / "mkdocs.yml").read_text(), flags=re.MULTILINE)]


def test_every_notebook_has_its_row_in_the_readme_and_its_page_in_the_site_nav():
    names = [path.stem for path in NOTEBOOKS]
    assert notebook_rows((ROOT / "README.md").read_text()) == names, \
        "README.md's Start here table lists every notebook of notebooks/, in order (one row each)"
    assert nav_notebooks() == names, "mkdocs.yml's nav lists every notebook of notebooks/, in order"


def test_notebook_rows_are_read_as_the_test_expects():
    """The row parser sees a missing row (else the test above could not fail)."""
    readme = (ROOT / "README.md").read_text()
    first_row = next(line for line in readme.splitlines() if line.startswith("| [`01_patches`]"))
    assert notebook_rows(readme)[0] == "01_patches"
    assert "01_patches" not in notebook_rows(readme.replace(first_row + "\n", ""))


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    paths = [ROOT / name for name in listed.stdout.split("\0") if name]
    return [p for p in paths if p.is_file() and p.suffix not in (".png", ".jpg", ".safetensors")]


def test_nothing_in_the_repository_refers_to_a_path_outside_it():
    found = [f"{path.relative_to(ROOT)}: {needle}" for path in tracked_text_files()
             for needle in OUTSIDE if needle in path.read_text(encoding="utf-8", errors="replace")]
    assert not found, f"paths outside the repository, which a user of the project never has: {found}"


# ---------------- the speed figures: prose numbers come from the block they describe


def prose_numbers_missing_from_their_block(markdown: str) -> list[str]:
    """Each number in the prose after a fenced block (up to the next heading or block) that the block lacks."""
    missing = []
    parts = re.split(r"^```[^\n]*\n", markdown, flags=re.MULTILINE)
    # parts alternate: text, block, text, block, ...; the text after block i is parts[2 * i + 2]
    for block, after in zip(parts[1::2], parts[2::2]):
        prose = re.split(r"^#", after, flags=re.MULTILINE)[0]
        prose = re.sub(r"`[^`]*`", "", prose)  # code names (attention_out=) are no figures
        numbers = set(re.findall(r"\d+(?:\.\d+)?", block))
        missing += [n for n in re.findall(r"\d+(?:\.\d+)?", prose) if n not in numbers]
    return missing


def test_the_speed_figures_prose_quotes_only_the_block_it_describes():
    page = (ROOT / "docs" / "bench.md").read_text()
    assert "```\nvit-inspect benchmark" in page and "Against the targets" in page
    assert prose_numbers_missing_from_their_block(page) == [], \
        "docs/bench.md: a number in the prose is not in the printed block above it"
    prose = page.index("Against the targets")
    first = re.search(r"\d\.\d{3}x", page[prose:])  # the first ratio the prose quotes, changed to one no run printed
    planted = page[:prose] + page[prose:].replace(first.group(0), "9.876x", 1)
    assert prose_numbers_missing_from_their_block(planted) == ["9.876"]


# ---------------- the hosted-CI workflow


def lint_workflow(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True)


def test_the_docs_workflow_is_a_valid_github_workflow(tmp_path):
    done = lint_workflow(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "docs.yml"
    broken.write_text(WORKFLOW.read_text().replace("    runs-on: ubuntu-latest\n    timeout-minutes",
                                                   "    runs-on: ubuntu-latest\n    timeout-minute"))
    assert lint_workflow(broken).returncode != 0, "the linter must refuse a misspelt key"


def test_the_docs_workflow_runs_nbval_on_cached_weights_and_publishes_the_executed_site():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["build"]["steps"]
    runs = [step.get("run", "") for step in steps]
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache@"))
    assert "huggingface" in cache["with"]["path"], "the Hugging Face cache is kept between runs"
    order = [next(i for i, run in enumerate(runs) if needle in run)
             for needle in ("vit_inspect download", "pytest notebooks/", "build_docs.py --execute",
                            "build_docs.py --check")]
    assert order == sorted(order), "weights, then nbval on them, then the executed site, then its check"
    assert "HF_HUB_OFFLINE" not in WORKFLOW.read_text(), "the workflow is where the network is"
    assert "make notebooks" not in " ".join(runs), "make notebooks strips the pictures the site needs"
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "build/site"
    assert workflow["jobs"]["deploy"]["steps"][0]["uses"].startswith("actions/deploy-pages@")


# ---------------- the site, built and opened in Chromium




@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from the committed notebooks, as they are (MkDocs in strict mode: a warning fails it)."""
    folder = tmp_path_factory.mktemp("docs")
    build_docs.build_site(build_docs.stage(folder / "src", {}), folder / "site")
    return folder / "site"


@pytest.fixture(scope="module")
def reports(site, chromium) -> dict[Path, dict]:
    return build_docs.site_reports(site, chromium)


def test_the_site_has_a_page_per_docs_page_and_notebook(site):
    expected = {f"{p.stem}.html" for p in (ROOT / "docs").glob("*.md")} | {f"notebooks/{p.stem}.html" for p in NOTEBOOKS}
    built = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert expected <= built, f"pages missing from the site: {sorted(expected - built)}"


def test_every_link_resolves_and_every_image_renders_in_chromium(site, reports):
    assert set(reports) >= {site / "index.html", site / "api.html", site / "notebooks" / "09_training.html"}
    assert build_docs.site_problems(reports, site) == []
    pictures = [image for image in reports[site / "notebooks" / "09_training.html"]["images"]
                if image["src"].startswith("data:image/png")]
    assert len(pictures) >= 5 and all(image["width"] > 0 for image in pictures), "09's stored figures render"


def test_the_api_page_lists_every_public_name(site, reports):
    ids = set(reports[site / "api.html"]["ids"])
    listed = {f"vit_inspect.{module}.{name}" for module, names in vit_inspect._EXPORTS.items() for name in names}
    assert {name.rsplit(".", 1)[1] for name in listed} == set(vit_inspect.__all__)
    assert sorted(listed - ids) == [], "the API page has an entry for every name of vit_inspect.__all__"


def test_the_site_check_sees_a_broken_link_anchor_image_and_a_remote_script(tmp_path, chromium):
    """A planted site: each kind of fault is reported, and a sound page is not."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text('<html><body><h1 id="top">ok</h1><a href="bad.html">x</a><a href="#top">t</a>'
                                     '</body></html>')
    (site / "bad.html").write_text('<html><head><script src="https://cdn.example.org/x.js"></script></head><body>'
                                   '<a href="missing.html">a</a><a href="index.html#nowhere">b</a>'
                                   '<img src="missing.png"></body></html>')
    problems = build_docs.site_problems(build_docs.site_reports(site, chromium), site)
    assert [p.split(":", 1)[0] for p in problems] == ["bad.html"] * 4, problems
    for needle in ("missing.html: no such page", "no element with id 'nowhere'", "missing.png", "cdn.example.org"):
        assert any(needle in p for p in problems), (needle, problems)


def test_stage_puts_executed_notebooks_in_place_of_the_committed_ones(tmp_path):
    executed = nbformat.read(NOTEBOOKS[0], as_version=4)
    executed.cells[-1].source += "\n# executed for the site"
    source = build_docs.stage(tmp_path / "src", {NOTEBOOKS[0].resolve(): executed})
    staged = nbformat.read(source / "notebooks" / NOTEBOOKS[0].name, as_version=4)
    assert staged.cells[-1].source.endswith("# executed for the site")
    assert (source / "notebooks" / NOTEBOOKS[1].name).read_bytes() == NOTEBOOKS[1].read_bytes()
    assert build_docs.API_MARKER not in (source / "api.md").read_text()
    assert "::: vit_inspect.recorder.capture" in (source / "api.md").read_text()
