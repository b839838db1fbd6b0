"""Lecture exports: the slide rule, the html/slides folders, and the pages opened in headless Chromium."""
import base64
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from vit_inspect.errors import VitInspectError
from vit_inspect.export import (MARKER, Executed, apply_slide_rule, browser_problems, check_in_browser,
                                execute_notebook, export_pages, find_chromium, prepare_folder,
                                slide_rule_violations, slide_types)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRE_CHROMIUM = "VIT_INSPECT_REQUIRE_CHROMIUM"  # set by .ci/run: in CI a missing browser is a failure


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        if os.environ.get(REQUIRE_CHROMIUM):
            pytest.fail(f"{REQUIRE_CHROMIUM} is set but chromium is not on PATH (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs it and runs this")
    return path


@pytest.fixture(scope="module")
def explorer_notebook():
    """Notebook 10, executed once for every export test (about a minute on a CPU)."""
    return execute_notebook(ROOT / "notebooks" / "10_attention_explorer.ipynb")


def test_slide_rule_one_idea_per_slide_with_code_and_figure_together():
    cells = [new_markdown_cell("# Title\nwhat you will see"), new_code_cell("import torch"),
             new_markdown_cell("**Shapes.** legend"), new_markdown_cell("## A section"), new_code_cell("x = 1"),
             new_code_cell("plot(x)"), new_markdown_cell("How to read it"), new_code_cell("  "),
             new_markdown_cell("### a smaller heading")]
    assert slide_types(cells) == ["slide", "skip", "subslide", "slide", "-", "subslide", "subslide", "skip",
                                  "subslide"]


def test_slide_rule_skips_the_colab_setup_cell_and_the_imports_after_it():
    setup = new_code_cell("# Colab setup", metadata={"tags": ["colab-setup"]})
    cells = [new_markdown_cell("# Title"), setup, new_code_cell("import torch"), new_code_cell("x = 1")]
    assert slide_types(cells) == ["slide", "skip", "skip", "subslide"]
    untagged = [cells[0], new_code_cell("# Colab setup"), *cells[2:]]
    assert slide_types(untagged) == ["slide", "skip", "subslide", "subslide"], "only the tagged cell moves the imports"


def test_slide_metadata_is_set_by_the_rule_and_checked():
    notebook = new_notebook(cells=[new_markdown_cell("# T"), new_code_cell("import os"), new_code_cell("1")])
    assert len(slide_rule_violations(notebook)) == 3
    assert apply_slide_rule(notebook) == 3 and slide_rule_violations(notebook) == []
    notebook.cells[2].metadata.slideshow = {"slide_type": "fragment"}  # a hand edit against the rule
    assert slide_rule_violations(notebook) == ["cell 2: is 'fragment', the rule says 'subslide'"]
    assert apply_slide_rule(notebook, only_missing=True) == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_follows_the_slide_rule(path):
    violations = slide_rule_violations(nbformat.read(path, as_version=4))
    assert not violations, (f"{path.name}: {violations[:3]}...; run "
                            f"`python -m vit_inspect.export slide-metadata notebooks/*.ipynb`")


def test_exports_never_write_into_a_users_folder_without_force(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    with pytest.raises(VitInspectError, match="not empty and was not made by an export.*--force"):
        prepare_folder(users, force=False)
    prepare_folder(users, force=True)
    assert (users / "notes.txt").read_text() == "keep me" and (users / MARKER).is_file()
    ours = tmp_path / "ours"
    prepare_folder(ours, force=False)
    (ours / "page.html").write_text("an earlier export")
    prepare_folder(ours, force=False)  # made by an export: may be written again
    (tmp_path / "file").write_text("x")
    with pytest.raises(VitInspectError, match="not a folder"):
        prepare_folder(tmp_path / "file", force=True)


def test_html_export_renders_in_chromium(chromium, explorer_notebook, tmp_path):
    index, page = export_pages([explorer_notebook], tmp_path / "html")
    assert 'href="10_attention_explorer.html"' in index.read_text()
    report = check_in_browser(page, screenshot=tmp_path / "page.png", chromium=chromium)
    assert len(report.images) >= 3, "the explorer's pictures are on the page"
    assert browser_problems(report) == []
    assert report.cells == len(explorer_notebook.notebook.cells)
    assert report.screenshot.stat().st_size > 10_000 and report.screenshot.read_bytes()[:4] == b"\x89PNG"
    assert browser_problems(check_in_browser(index, chromium=chromium)) == []


def test_slides_put_each_slide_of_the_rule_in_a_section(explorer_notebook, tmp_path):
    index, slides = export_pages([explorer_notebook], tmp_path / "slides", kind="slides",
                                 scripts={"reveal_url_prefix": "reveal.js", "require_js_url": "lib/require.js"})
    text = slides.read_text()
    types = slide_types(explorer_notebook.notebook.cells)
    # nbconvert opens a slide with two sections (horizontal, then its first vertical one), a subslide with one
    assert text.count("<section") == 2 * types.count("slide") + types.count("subslide")
    assert '"reveal.js/dist/reveal.js"' in text, "reveal.js is loaded from --reveal-prefix"
    assert 'src="lib/require.js"' in text and "var scroll = true" in text, "tall slides scroll"
    assert "10_attention_explorer.slides.html" in index.read_text()


def test_the_browser_check_sees_a_broken_figure_and_an_error(chromium, tmp_path):
    """The check itself can fail: a picture that does not decode and a cell that raised."""
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"not really a png").decode()
    figure = new_code_cell("plot()", outputs=[new_output("display_data", data={"image/png": broken})])
    failing = new_code_cell("1 / 0", outputs=[new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                                          traceback=["Traceback (most recent call last)",
                                                                     "ZeroDivisionError: division by zero"])])
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://example.org/x)"
    notebook = new_notebook(cells=[new_markdown_cell(f"# Broken\n\n{badge}"), figure, failing])
    _, page = export_pages([Executed(tmp_path / "broken.ipynb", notebook)], tmp_path / "html")
    problems = browser_problems(check_in_browser(page, chromium=chromium))
    assert any("natural size 0x0" in problem for problem in problems), problems
    assert not any("colab" in problem for problem in problems), "a remote badge never loads offline: no problem"
    assert any("ZeroDivisionError" in problem for problem in problems), problems
