"""Lecture exports: the slide rule, the html/slides folders, and the pages opened in headless Chromium."""
import base64
import io
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from PIL import Image

from vit_inspect import export
from vit_inspect.errors import VitInspectError
from vit_inspect.export import (LIB, MARKER, Executed, apply_slide_rule, browser_problems, check_in_browser,
                                check_slides_in_browser, execute_notebook, export_pages,
                                offline_copy, prepare_folder, slide_rule_violations, slide_types, slides_problems)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))




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


# ---------------- pages with no network


def small_deck() -> Executed:
    """A notebook as an export sees it, already executed: a title with the Colab badge, two slides with a figure each."""
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(buffer, format="PNG")
    figure = new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode()})
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://example.org/x)"
    cells = [new_markdown_cell(f"# A small deck\n\n{badge}\n\nwhat you will see"), new_markdown_cell("## One"),
             new_code_cell("plot()", outputs=[figure]), new_markdown_cell("## Two"),
             new_code_cell("plot()", outputs=[figure])]
    notebook = new_notebook(cells=cells)
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    return Executed(Path("small_deck.ipynb"), notebook)


def remote_addresses(page: Path) -> list[str]:
    """Every src= or href= of the page that names another host (links one clicks excepted)."""
    text = page.read_text()
    loaded = re.findall(r'<(?:script|link|img)[^>]*?(?:src|href)="(https?://[^"]+)"', text)
    return loaded + re.findall(r'import\s*\(?\s*["\'](https?://[^"\']+)', text)


def test_offline_slides_render_move_on_and_fetch_nothing(chromium, explorer_notebook, tmp_path):
    """The explorer's deck in headless Chromium with the network off (every other host unresolvable)."""
    _, deck = export_pages([explorer_notebook], tmp_path / "slides", kind="slides")
    assert (tmp_path / "slides" / LIB / "reveal.js" / "dist" / "reveal.js").is_file()
    assert (tmp_path / "slides" / LIB / "require.js").is_file() and remote_addresses(deck) == []
    report = check_slides_in_browser(deck, chromium=chromium)
    assert slides_problems(report) == [], "the deck renders, every figure has a size, the key moves on"
    types = slide_types(explorer_notebook.notebook.cells)
    assert report.slides == types.count("slide") + types.count("subslide"), "every slide was visited"
    assert len(report.figures) >= 4 and report.figures[0]["width"] > 100
    assert report.requested == [], f"the deck asked other hosts for {report.requested}"
    assert "widgets" in explorer_notebook.notebook.metadata, "the export changed a copy, not the executed notebook"


def test_offline_pages_fetch_nothing_either(chromium, tmp_path):
    index, page = export_pages([small_deck()], tmp_path / "html")
    assert remote_addresses(page) == [] and (tmp_path / "html" / LIB / "MathJax" / "MathJax.js").is_file()
    report = check_in_browser(page, chromium=chromium)
    assert browser_problems(report) == [] and len(report.images) == 2, "the badge is a plain link now"
    assert report.requested == [] and report.libraries == ["require", "MathJax"], "both loaded from lib/"


def test_a_deck_from_the_cdn_is_blank_without_network_and_the_check_says_so(chromium, tmp_path):
    """The control: the same checks fail on nbconvert's CDN addresses and name what was asked for."""
    _, deck = export_pages([small_deck()], tmp_path / "cdn", kind="slides", offline=False)
    assert remote_addresses(deck), "--cdn loads the scripts from other hosts"
    problems = slides_problems(check_slides_in_browser(deck, chromium=chromium))
    assert problems and "did not start" in problems[0], problems
    assert any("asked another host for https://unpkg.com/reveal.js" in problem for problem in problems), problems
    assert any("colab-badge.svg" in problem for problem in problems), "the badge is a request too"


def test_the_offline_copy_keeps_the_notebook_and_a_missing_package_is_one_clear_error(tmp_path, monkeypatch):
    item = small_deck()
    copy = offline_copy(item.notebook)
    assert copy.cells[0].source.startswith("# A small deck\n\n[Open in Colab](https://example.org/x)")
    assert "widgets" not in copy.metadata and "widgets" in item.notebook.metadata
    assert "colab-badge.svg" in item.notebook.cells[0].source, "the caller's notebook is unchanged"
    find_spec = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "sphinx_revealjs" else
                        find_spec(name))
    with pytest.raises(VitInspectError, match="sphinx-revealjs package, which is not installed: pip install "
                                              "sphinx-revealjs .or export with --cdn"):
        export_pages([item], tmp_path / "slides", kind="slides")
