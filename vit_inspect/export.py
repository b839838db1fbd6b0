"""Lecture hand-outs: the notebooks executed and exported as reveal.js slides or web pages.

    python -m vit_inspect.export html   [--out build/html]   [--force] [--cdn] [NOTEBOOK ...]   (make html)
    python -m vit_inspect.export slides [--out build/slides] [--force] [--cdn] [--reveal-prefix URL]
                                        [--require-js URL] [--jquery URL] [NOTEBOOK ...]
    python -m vit_inspect.export slide-metadata NOTEBOOK ...   set the slide rule's metadata in place
    python -m vit_inspect.export check-html PAGE.html ...      open pages in headless Chromium

Each notebook (default: notebooks/*.ipynb, in order) is executed in memory - the files
are never changed - and written into one folder with an ``index.html`` that links them
in order. An existing folder is written into only when it is empty, when an earlier
export made it (it holds the marker file), or with ``--force``; a user's folder is never
overwritten by accident.

Self-contained by default: the scripts and styles the pages load (reveal.js from the
sphinx-revealjs package; require.js, jQuery and MathJax from nbclassic) are copied from
those installed packages into ``lib/`` beside the pages, the Colab badge becomes a plain
link, and saved widget state is left out (live widgets need a kernel), so nothing is
fetched from the network, neither at export nor at view time: a deck works in a lecture
hall without network. ``--cdn`` keeps nbconvert's CDN addresses instead.

The slide rule (:func:`slide_types`): one idea per slide, code and its figure together.
:func:`check_in_browser` opens an exported page in headless Chromium and reports each
image's natural size and any cell that shows an error.
"""
from __future__ import annotations

import argparse
import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import nbformat

from .errors import VitInspectError

MARKER = ".vit-inspect-export"
NOTEBOOK_DIR = Path("notebooks")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-default-apps",
                  "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost")  # nothing leaves the machine
LIB = "lib"  # the folder beside the pages that holds the offline copies
# What a page loads, as (installed package, path inside it, path under LIB/):
OFFLINE_FILES = {
    "reveal.js": ("sphinx_revealjs", "_static/revealjs", "reveal.js"),
    "require.js": ("nbclassic", "static/components/requirejs/require.js", "require.js"),
    "jquery": ("nbclassic", "static/components/jquery/jquery.min.js", "jquery.min.js"),
    "MathJax": ("nbclassic", "static/components/MathJax", "MathJax"),
}
PIP_NAMES = {"sphinx_revealjs": "sphinx-revealjs", "nbclassic": "nbclassic"}
MATHJAX_CONFIG = "?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # the full TeX configuration nbclassic ships
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")
# Offline pages drop what would still reach for a CDN: reveal's template imports mermaid on every
# page (these notebooks draw no diagrams), and saved widget state loads a widget renderer.
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
"""
OFFLINE_TEMPLATE_NAME = "vit_inspect_offline.html.j2"


# ---------------- the slide rule


def slide_types(cells: Sequence[nbformat.NotebookNode]) -> list[str]:
    """The reveal.js slide type of every cell, by one rule.

    - the first cell (title, what the reader will see): "slide";
    - the Colab setup cell (tagged "colab-setup") and the imports cell after it: "skip" (they still
      run; installs and imports teach nothing on a screen);
    - a markdown cell opening with a "# " or "## " heading starts a section: "slide";
    - any other markdown cell starts a step of its section: "subslide";
    - a code cell after a markdown cell: "-", on the slide of the text that explains it,
      its output (the figure) with it; a code cell after another code cell: "subslide",
      so that every figure gets a slide of its own;
    - an empty cell: "skip".
    """
    types = []
    setup = len(cells) > 1 and "colab-setup" in cells[1].get("metadata", {}).get("tags", [])
    for index, cell in enumerate(cells):
        previous = cells[index - 1].cell_type if index else None
        if not cell.source.strip():
            types.append("skip")
        elif index == 0:
            types.append("slide")
        elif (index == 1 or (index == 2 and setup)) and cell.cell_type == "code":
            types.append("skip")
        elif cell.cell_type == "markdown":
            types.append("slide" if re.match(r"#{1,2} ", cell.source.lstrip()) else "subslide")
        else:
            types.append("-" if previous == "markdown" else "subslide")
    return types


def slide_type_of(cell: nbformat.NotebookNode) -> str | None:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type")


def slide_rule_violations(notebook: nbformat.NotebookNode) -> list[str]:
    """'cell i: is X, the rule says Y' for every cell whose slide metadata breaks the rule."""
    return [f"cell {i}: is {slide_type_of(cell)!r}, the rule says {wanted!r}"
            for i, (cell, wanted) in enumerate(zip(notebook.cells, slide_types(notebook.cells)))
            if slide_type_of(cell) != wanted]


def apply_slide_rule(notebook: nbformat.NotebookNode, only_missing: bool = False) -> int:
    """Set every cell's slide metadata by the rule (``only_missing``: where it has none); returns the changes."""
    changed = 0
    for cell, wanted in zip(notebook.cells, slide_types(notebook.cells)):
        if slide_type_of(cell) != wanted and not (only_missing and slide_type_of(cell)):
            cell.setdefault("metadata", {})["slideshow"] = {"slide_type": wanted}
            changed += 1
    return changed


def set_slide_metadata(paths: Sequence[Path]) -> None:
    """Apply the slide rule to notebook files in place (nothing else in them changes)."""
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        changed = apply_slide_rule(notebook)
        if changed:
            nbformat.write(notebook, path)
        print(f"{path}: {changed} cell(s) changed")


# ---------------- executing and exporting


class Executed(NamedTuple):
    path: Path                       # the notebook file, unchanged
    notebook: nbformat.NotebookNode  # executed in memory, with its outputs


def execute_notebook(path: Path, timeout: int = 600) -> Executed:
    """Run every cell of ``path`` in a fresh kernel started in its folder; a failing cell is one error line."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise VitInspectError(f"{path}: a cell failed while exporting: {last}") from None
    return Executed(path, notebook)


def prepare_folder(out: Path, force: bool) -> None:
    """Make ``out`` ready to write into, refusing a non-empty folder that no export made unless ``force``."""
    if out.exists() and not out.is_dir():
        raise VitInspectError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        raise VitInspectError(f"{out}: folder is not empty and was not made by an export; "
                              "pass --force (make ... FORCE=1) to write into it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m vit_inspect.export; may be overwritten by the next export\n")


def notebook_title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """The first '# ' heading of the first cell."""
    first = notebook.cells[0].source if notebook.cells else ""
    match = re.search(r"^# (.+)$", first, flags=re.MULTILINE)
    return match.group(1).strip() if match else fallback


def write_index(out: Path, pages: Sequence[tuple[str, str]], heading: str) -> Path:
    """``out/index.html``: the pages [(file name, title)] as links, in order."""
    items = "\n".join(f'  <li><a href="{html.escape(name)}">{html.escape(title)}</a></li>' for name, title in pages)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{html.escape(heading)}</title>\n'
            '<style>body { font-family: sans-serif; font-size: 22px; max-width: 46em; margin: 2em auto; }\n'
            'li { margin: 0.5em 0; }</style>\n</head>\n<body>\n'
            f'<h1>{html.escape(heading)}</h1>\n<ol>\n{items}\n</ol>\n</body>\n</html>\n')
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def package_folder(package: str) -> Path:
    """Where an installed package lives, found without importing it; a clear error naming the pip package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VitInspectError(f"offline pages copy their scripts from the {PIP_NAMES.get(package, package)} package, "
                              f"which is not installed: pip install {PIP_NAMES.get(package, package)} "
                              "(or export with --cdn to load them from the internet)")
    return Path(spec.submodule_search_locations[0])


def copy_offline_files(out: Path, kind: str = "slides") -> dict[str, str]:
    """Copy what the pages load into ``out/lib/``; returns the exporter options that point at the copies."""
    wanted = ["require.js", "MathJax"] + (["reveal.js", "jquery"] if kind == "slides" else [])
    for name in wanted:
        package, inside, beside = OFFLINE_FILES[name]
        source, target = package_folder(package) / inside, out / LIB / beside
        if not source.exists():
            raise VitInspectError(f"{source}: missing from the installed {PIP_NAMES[package]} package; "
                                  "reinstall it, or export with --cdn")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
    options = {"require_js_url": f"{LIB}/require.js", "mathjax_url": f"{LIB}/MathJax/MathJax.js{MATHJAX_CONFIG}"}
    if kind == "slides":
        options.update(reveal_url_prefix=f"{LIB}/reveal.js", jquery_url=f"{LIB}/jquery.min.js")
    return options


def offline_copy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as an offline page shows it: Colab badges as plain links, no saved widget state."""
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))  # a deep copy; the caller's stays as it was
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = BADGE.sub(r"[Open in Colab](\1)", cell.source)
    return notebook


def make_exporter(kind: str, options: dict[str, str], offline: bool):
    """nbconvert's slides or lab-HTML exporter with ``options`` (script addresses), offline template if asked."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter, SlidesExporter

    if offline:
        options = {**options, "extra_loaders": [DictLoader({OFFLINE_TEMPLATE_NAME: _OFFLINE_TEMPLATE})],
                   "template_file": OFFLINE_TEMPLATE_NAME}
    if kind == "slides":
        theme = {"reveal_theme": "white"} if offline else {}  # "simple", nbconvert's default, imports web fonts
        return SlidesExporter(reveal_scroll=True, **theme, **options)
    return HTMLExporter(template_name="lab", **{k: v for k, v in options.items() if k != "reveal_url_prefix"})


def export_pages(executed: Sequence[Executed], out: Path, kind: str = "html", force: bool = False,
                 scripts: dict[str, str] | None = None, offline: bool = True) -> list[Path]:
    """Write each executed notebook as a web page ("html") or reveal.js slides ("slides"), plus index.html.

    ``offline`` (the default): everything the pages load is copied from installed packages
    into ``out/lib/`` (:func:`copy_offline_files`) and nothing points at another host, so
    the pages work without network. ``offline=False``: nbconvert's CDN addresses, or the
    ones in ``scripts`` (exporter options ``reveal_url_prefix``, ``require_js_url``,
    ``jquery_url``, which override the copies too). Tall slides scroll, so code and figure
    stay together.
    """
    prepare_folder(out, force)
    options = copy_offline_files(out, kind) if offline else {}
    options.update({key: value for key, value in (scripts or {}).items() if value})
    exporter = make_exporter(kind, options, offline)
    pages, written = [], []
    for item in executed:
        notebook = offline_copy(item.notebook) if offline else item.notebook
        if kind == "slides":
            apply_slide_rule(notebook, only_missing=True)
        body, _ = exporter.from_notebook_node(notebook)
        name = f"{item.path.stem}.slides.html" if kind == "slides" else f"{item.path.stem}.html"
        (out / name).write_text(body, encoding="utf-8")
        pages.append((name, notebook_title(notebook, item.path.stem)))
        written.append(out / name)
    heading = "vit-inspect slides" if kind == "slides" else "vit-inspect notebooks"
    return [write_index(out, pages, heading), *written]


# ---------------- checking a page in a real browser


class BrowserReport(NamedTuple):
    images: list[dict]       # {"width", "height", "src"}: natural size and the start of the source
    error_cells: list[str]   # the first line of every output that shows a traceback
    cells: int               # notebook cells on the page
    screenshot: Path | None
    requested: list[str] = []  # what the page asked other hosts for (Resource Timing lists http(s), failed ones too)
    libraries: list[str] = []  # which of require.js, MathJax and jQuery loaded (their globals exist)


_CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(
    (img) => ({width: img.naturalWidth, height: img.naturalHeight, src: img.src.slice(0, 40)}));
  const errors = Array.from(document.querySelectorAll(".jp-OutputArea-output"))
    .filter((el) => el.textContent.includes("Traceback (most recent call last)"))
    .map((el) => el.textContent.trim().split("\\n").slice(0, 2).join(" "));
  const report = document.createElement("pre");
  report.id = "vit-inspect-browser-check";
  const requested = performance.getEntriesByType("resource").map((entry) => entry.name);
  const libraries = ["require", "MathJax", "jQuery"].filter((name) => typeof window[name] !== "undefined");
  report.textContent = JSON.stringify({images, errors, cells: document.querySelectorAll(".jp-Cell").length,
                                       requested, libraries});
  document.body.appendChild(report);
});
</script>
"""


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _run_chromium(chromium: str, args: list[str], profile: Path, timeout: float) -> str:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VitInspectError(f"chromium did not finish within {timeout:.0f} s: {' '.join(args)}") from None
    if done.returncode != 0:
        raise VitInspectError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


def dump_dom(page: Path, chromium: str | None = None, screenshot: Path | None = None,
             timeout: float = 120.0, flags: Sequence[str] = ()) -> str:
    """Load ``page`` in headless Chromium, let its scripts run, and return the DOM it ends with.

    With ``screenshot``, a PNG of the page (1280 pixels wide) is saved there too. ``flags``:
    more command-line switches (e.g. a proxy that records and refuses every request).
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise VitInspectError("chromium not found on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="vit-inspect-browser-") as profile:
        dom = _run_chromium(chromium, [*flags, "--virtual-time-budget=20000", "--dump-dom", page.resolve().as_uri()],
                            Path(profile), timeout)
        if screenshot is not None:
            _run_chromium(chromium, [*flags, f"--screenshot={screenshot.resolve()}", "--window-size=1280,1600",
                                     "--virtual-time-budget=20000", page.resolve().as_uri()], Path(profile), timeout)
    return dom


def check_in_browser(page: Path, screenshot: Path | None = None, chromium: str | None = None,
                     timeout: float = 120.0) -> BrowserReport:
    """Open ``page`` in headless Chromium: each image's natural size, outputs showing an error, a screenshot.

    The page is read from a copy beside it (so that its ``lib/`` is found) with a small
    script that reports what the browser rendered once everything has loaded; the
    screenshot is taken of the page itself.
    """
    copy = page.with_name(f".check-{page.name}")
    source = page.read_text(encoding="utf-8")
    try:
        copy.write_text(source.replace("</body>", _CHECK_SCRIPT + "</body>", 1) if "</body>" in source
                        else source + _CHECK_SCRIPT, encoding="utf-8")
        dom = dump_dom(copy, chromium, timeout=timeout)
    finally:
        copy.unlink(missing_ok=True)
    if screenshot is not None:
        dump_dom(page, chromium, screenshot, timeout)
    found = re.search(r'<pre id="vit-inspect-browser-check">(.*?)</pre>', dom, flags=re.DOTALL)
    if found is None:
        raise VitInspectError(f"{page}: the browser never finished loading the page")
    report = json.loads(html.unescape(found.group(1)))
    return BrowserReport(report["images"], report["errors"], report["cells"], screenshot, report["requested"],
                         report["libraries"])


def browser_problems(report: BrowserReport) -> list[str]:
    """What is wrong on a checked page: images that did not render, cells that show an error.

    Images from other sites (the Colab badge) are left out: the check runs with the network shut, so they never load.
    """
    local = [(i, image) for i, image in enumerate(report.images) if not image["src"].startswith(("http:", "https:"))]
    broken = [f"image {i} ({image['src']}...) has natural size {image['width']}x{image['height']}"
              for i, image in local if not (image["width"] > 0 and image["height"] > 0)]
    return broken + [f"a cell shows an error: {text}" for text in report.error_cells] + remote_requests(report.requested)


def remote_requests(requested: Sequence[str]) -> list[str]:
    """Each address a page asked another host for: it fails without network (export without --cdn)."""
    return [f"asked another host for {url[:100]} (fails without network)" for url in requested
            if not url.startswith(("file:", "data:", "blob:", "about:"))]


class SlidesReport(NamedTuple):
    ready: bool             # reveal.js loaded and started the deck
    moved: bool             # the right-arrow key went from the first slide to the next
    slides: int             # slides visited, first to last (vertical ones included)
    figures: list[dict]     # every image on every slide, as shown: {"slide", "width", "height", "natural", "src"}
    images_on_page: int     # all <img> of the page, to compare with the figures seen
    error: str              # why the deck did not start, if it did not
    requested: list[str]    # what the page asked other hosts for (Resource Timing lists http(s), failed ones too)


_SLIDES_CHECK_SCRIPT = """<script>
(function () {
  const report = (data) => {
    data.requested = performance.getEntriesByType("resource").map((entry) => entry.name);
    const pre = document.createElement("pre");
    pre.id = "vit-inspect-slides-check";
    pre.textContent = JSON.stringify(data);
    document.body.appendChild(pre);
  };
  const fail = (error) => report({ready: false, moved: false, slides: 0, figures: [], images_on_page: 0, error});
  if (typeof require === "undefined") { fail("require.js did not load"); return; }
  require(["REVEAL_URL"], (Reveal) => {
    let waited = 0;
    const walk = () => {
      if (!(Reveal.isReady && Reveal.isReady())) {
        if ((waited += 100) > 15000) { fail("reveal.js loaded but never became ready"); return; }
        setTimeout(walk, 100);
        return;
      }
      Reveal.configure({transition: "none"});
      Reveal.slide(0, 0);
      document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight", keyCode: 39, which: 39, bubbles: true}));
      const moved = Reveal.getIndices().h === 1 || Reveal.getIndices().v === 1;
      Reveal.slide(0, 0);
      const figures = [];
      let slides = 0;
      for (; slides < 2000; slides++) {
        for (const img of Reveal.getCurrentSlide().querySelectorAll("img")) {
          const box = img.getBoundingClientRect();
          figures.push({slide: slides, width: box.width, height: box.height, natural: img.naturalWidth,
                        src: img.src.slice(0, 40)});
        }
        if (Reveal.isLastSlide()) break;
        Reveal.next();
      }
      report({ready: true, moved, slides: slides + 1, figures, images_on_page: document.images.length, error: ""});
    };
    walk();
  }, (err) => fail("reveal.js did not load: " + err));
})();
</script>
"""


def check_slides_in_browser(page: Path, chromium: str | None = None, flags: Sequence[str] = (),
                            timeout: float = 120.0) -> SlidesReport:
    """Open an exported deck in headless Chromium: does reveal.js start, does the right-arrow key move
    to the next slide, and what size does every figure have when its slide is shown?

    The deck is read from a copy (beside it, so its ``lib/`` is found) with a script that
    walks through every slide once reveal.js is ready.
    """
    source = page.read_text(encoding="utf-8")
    found = re.search(r'"([^"]*)/dist/reveal\.js"', source)
    if found is None:
        raise VitInspectError(f"{page}: not a reveal.js deck (no dist/reveal.js is loaded)")
    script = _SLIDES_CHECK_SCRIPT.replace("REVEAL_URL", found.group(1) + "/dist/reveal.js")
    copy = page.with_name(f".check-{page.name}")
    try:
        copy.write_text(source.replace("</html>", script + "</html>"), encoding="utf-8")
        dom = dump_dom(copy, chromium, timeout=timeout, flags=flags)
    finally:
        copy.unlink(missing_ok=True)
    result = re.search(r'<pre id="vit-inspect-slides-check">(.*?)</pre>', dom, flags=re.DOTALL)
    if result is None:
        raise VitInspectError(f"{page}: the browser never finished the slide check")
    return SlidesReport(**json.loads(html.unescape(result.group(1))))


def slides_problems(report: SlidesReport) -> list[str]:
    """What is wrong with a checked deck: reveal.js did not start, the key did not move, a figure has no size."""
    if not report.ready:
        return [f"the deck did not start: {report.error}"] + remote_requests(report.requested)
    problems = remote_requests(report.requested)
    problems += [] if report.moved else ["the right-arrow key did not move to the next slide"]
    problems += [f"slide {figure['slide']}: image ({figure['src']}...) is {figure['width']:.0f}x{figure['height']:.0f}"
                 f" on screen, natural width {figure['natural']}" for figure in report.figures
                 if not (figure["width"] > 0 and figure["height"] > 0 and figure["natural"] > 0)]
    if len(report.figures) < report.images_on_page:
        problems.append(f"{report.images_on_page - len(report.figures)} image(s) are on no slide")
    return problems


# ---------------- command line


def default_notebooks() -> list[Path]:
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not paths:
        raise VitInspectError(f"no notebooks in {NOTEBOOK_DIR.resolve()}; run from the repository root")
    return paths


def _export(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in args.notebooks] or default_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise VitInspectError(f"{missing[0]}: no such notebook")
    prepare_folder(args.out, args.force)  # refuse before minutes of execution, not after
    executed = []
    for path in paths:
        start = time.perf_counter()
        executed.append(execute_notebook(path))
        print(f"executed {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    scripts = {"reveal_url_prefix": args.reveal_prefix, "require_js_url": args.require_js, "jquery_url": args.jquery}
    written = export_pages(executed, args.out, args.command, args.force, scripts, offline=not args.cdn)
    print(f"wrote {len(written) - 1} page(s) and {written[0]}")


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for page in map(Path, args.pages):
        problems = browser_problems(check_in_browser(page))
        if page.name.endswith(".slides.html"):
            problems += slides_problems(check_slides_in_browser(page))
        failed += bool(problems)
        print(f"{page}: " + ("; ".join(problems) if problems else "every image rendered, no cell shows an error"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_inspect.export", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for kind in ("html", "slides"):
        command = commands.add_parser(kind, help=f"execute the notebooks and export them as {kind}")
        command.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
        command.add_argument("--out", type=Path, default=Path("build") / kind)
        command.add_argument("--force", action="store_true",
                             help="write into a non-empty folder that no export made")
        command.add_argument("--cdn", action="store_true",
                             help="load reveal.js, require.js, jQuery and MathJax from nbconvert's CDNs "
                                  "(default: copies from installed packages in OUT/lib, no network needed)")
        for option, what in (("--reveal-prefix", "the reveal.js folder"), ("--require-js", "require.js"),
                             ("--jquery", "jquery.min.js")):
            command.add_argument(option, default=None, help=f"URL or path of {what} "
                                 "(default: the copy in OUT/lib, or with --cdn nbconvert's CDN)")
    commands.add_parser("slide-metadata", help="set the slide rule's metadata in place").add_argument(
        "notebooks", nargs="+")
    commands.add_parser("check-html", help="open exported pages in headless Chromium").add_argument("pages", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "slide-metadata":
            set_slide_metadata([Path(p) for p in args.notebooks])
        elif args.command == "check-html":
            return _check(args)
        else:
            _export(args)
    except VitInspectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
