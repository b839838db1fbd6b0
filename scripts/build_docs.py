"""Build the documentation site with MkDocs, offline, and check it in headless Chromium.

    python scripts/build_docs.py [--out build/site] [--force]           the committed notebooks as they are (seconds)
    python scripts/build_docs.py --execute [NOTEBOOK ...] [--out DIR]    make docs: notebooks executed first (minutes)
    python scripts/build_docs.py --check build/site                      open every page in headless Chromium

The pages in ``docs/`` and the notebooks are staged into ``build/docs-src`` (the API page gets
its reference, one entry per name of ``vit_inspect._EXPORTS``), and ``mkdocs.yml`` is built from
there. With ``--execute`` each notebook is run first in a fresh kernel, in memory, by
``vit_inspect.export.execute_notebook`` (as ``make html`` does): ``notebooks/`` is never changed,
and every output, pictures included, goes into the staged copy. Without pretrained weights the
pictures are those of untrained weights, with their red label. ``--execute NOTEBOOK ...`` runs
only those and takes the others as committed.

``--check`` loads every page of a built site in headless Chromium, with the network shut, and
lists what is wrong: a link inside the site to a page or an anchor that does not exist, an image
that did not render, a script or style sheet loaded from another host.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's vit_inspect, also when run as a file

import vit_inspect  # noqa: E402  (after the path: the checkout's package, not an installed one)
from vit_inspect.errors import VitInspectError  # noqa: E402
from vit_inspect.export import (CHROMIUM_FLAGS, MARKER, execute_notebook, find_chromium,  # noqa: E402
                                prepare_folder)

CONFIG = ROOT / "mkdocs.yml"
STAGE = ROOT / "build" / "docs-src"
SITE = ROOT / "build" / "site"
API_MARKER = "<!-- api-reference: written here by scripts/build_docs.py -->"


# ---------------- staging and building


def api_reference() -> str:
    """Markdown for mkdocstrings: a heading per module, an entry per public name, in ``_EXPORTS`` order."""
    parts = []
    for module, names in vit_inspect._EXPORTS.items():
        entries = "\n\n".join(f"::: vit_inspect.{module}.{name}" for name in names)
        parts.append(f"### `vit_inspect.{module}`\n\n{entries}\n")
    return "\n".join(parts)


def stage(source: Path, executed: dict[Path, nbformat.NotebookNode]) -> Path:
    """``docs/`` and ``notebooks/*.ipynb`` copied into ``source`` (emptied first); executed ones replace their file."""
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(ROOT / "docs", source)
    api = source / "api.md"
    api.write_text(api.read_text(encoding="utf-8").replace(API_MARKER, api_reference()), encoding="utf-8")
    (source / "notebooks").mkdir()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = source / "notebooks" / path.name
        if path.resolve() in executed:
            nbformat.write(executed[path.resolve()], target)
        else:
            shutil.copy2(path, target)
    return source


def execute(paths: list[Path]) -> dict[Path, nbformat.NotebookNode]:
    """Each notebook run top to bottom in a fresh kernel (vit_inspect.export), in memory."""
    executed = {}
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        executed[path.resolve()] = execute_notebook(path).notebook
    return executed


def build_site(source: Path, site: Path, force: bool = False) -> Path:
    """MkDocs builds ``mkdocs.yml`` from the staged ``source`` into ``site`` (strict: a warning fails it)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    prepare_folder(site, force)
    config = load_config(config_file=str(CONFIG), docs_dir=str(source), site_dir=str(site))
    try:
        build(config)
    except MkDocsException as err:  # strict mode: the warnings above say what
        raise VitInspectError(f"mkdocs could not build the site: {err.format_message()}") from None
    (site / MARKER).write_text("written by scripts/build_docs.py; may be overwritten by the next build\n")
    return site / "index.html"


# ---------------- checking the built site in a real browser


_HARNESS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
<iframe id="page" style="width: 1280px; height: 900px"></iframe>
<script>
const pages = PAGES, reports = {}, frame = document.getElementById("page");
function report(doc) {
  return {
    links: Array.from(doc.querySelectorAll("a[href]")).map((a) => a.href),
    ids: Array.from(doc.querySelectorAll("[id], a[name]")).map((el) => el.id || el.getAttribute("name")),
    images: Array.from(doc.images).map((img) => ({src: img.src.slice(0, 60), width: img.naturalWidth})),
    loads: Array.from(doc.querySelectorAll("script[src], link[rel=stylesheet][href]")).map((el) => el.src || el.href),
  };
}
function next(i) {
  if (i === pages.length) {
    const pre = document.createElement("pre");
    pre.id = "vit-inspect-site-check";
    pre.textContent = JSON.stringify(reports);
    document.body.appendChild(pre);
    return;
  }
  frame.onload = () => {
    try { reports[pages[i]] = report(frame.contentDocument); }
    catch (err) { reports[pages[i]] = {error: String(err)}; }
    next(i + 1);
  };
  frame.src = pages[i];
}
next(0);
</script></body></html>
"""


def dump_dom(page: Path, chromium: str, timeout: float) -> str:
    """The DOM of ``page`` once its scripts are done, from headless Chromium with the network shut.

    File pages may read each other (``--allow-file-access-from-files``): the harness reads its iframe.
    """
    with tempfile.TemporaryDirectory(prefix="vit-inspect-browser-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--allow-file-access-from-files",
                   "--virtual-time-budget=60000", "--dump-dom", page.resolve().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VitInspectError(f"chromium did not finish within {timeout:.0f} s on {page}") from None
    if done.returncode != 0:
        raise VitInspectError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


def site_reports(site: Path, chromium: str | None = None, timeout: float = 300.0) -> dict[Path, dict]:
    """Every page of the built site (404.html aside) as Chromium sees it, in one browser run, by its path.

    A harness page in a copy of the site loads each page in turn into an iframe and reads, once
    the page has loaded: the links (resolved), the ids, each image's natural width, and what the
    page loads as scripts and style sheets.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise VitInspectError("chromium not found on PATH (Debian: apt-get install chromium)")
    if not (site / "index.html").is_file():
        raise VitInspectError(f"{site}: no index.html, so no built site to check")
    with tempfile.TemporaryDirectory(prefix="vit-inspect-site-") as tmp:
        copy = Path(tmp) / "site"
        shutil.copytree(site, copy)
        pages = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*.html") if p.name != "404.html")
        harness = copy / "vit-inspect-site-check.html"
        harness.write_text(_HARNESS.replace("PAGES", json.dumps(pages)), encoding="utf-8")
        dom = dump_dom(harness, chromium, timeout)
        prefix = copy.resolve().as_uri()
    found = re.search(r'<pre id="vit-inspect-site-check">(.*?)</pre>', dom, flags=re.DOTALL)
    if found is None:
        raise VitInspectError(f"{site}: the browser did not finish loading the pages within its time budget")
    reports = json.loads(html.unescape(found.group(1)))
    return {site / name: with_site_paths(report, prefix, site) for name, report in reports.items()}


def with_site_paths(report: dict, prefix: str, site: Path) -> dict:
    """Links into the copy read as links into ``site``, so that they can be checked against its files."""
    if "error" in report:
        raise VitInspectError(f"the browser could not read a page: {report['error']}")
    report["links"] = [site.resolve().as_uri() + link[len(prefix):] if link.startswith(prefix) else link
                       for link in report["links"]]
    return report


def link_problem(link: str, site: Path, ids: dict[Path, set[str]]) -> str | None:
    """Why a link inside the site leads nowhere, or None (links to other hosts are not followed offline)."""
    url = urlparse(link)
    if url.scheme != "file":
        return None
    target = Path(unquote(url.path))
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"{link}: no such page"
    if url.fragment and target.suffix == ".html" and unquote(url.fragment) not in ids.get(target, set()):
        return f"{link}: no element with id {unquote(url.fragment)!r} on {target.relative_to(site.resolve())}"
    return None


def site_problems(reports: dict[Path, dict], site: Path) -> list[str]:
    """Broken internal links and anchors, images that did not render, scripts or styles from other hosts."""
    ids = {page.resolve(): set(report["ids"]) for page, report in reports.items()}
    problems = []
    for page, report in reports.items():
        name = page.relative_to(site).as_posix()
        problems += [f"{name}: link {why}" for why in
                     dict.fromkeys(filter(None, (link_problem(link, site, ids) for link in report["links"])))]
        problems += [f"{name}: image {image['src']}... did not render" for image in report["images"]
                     if image["width"] == 0 and not image["src"].startswith(("http:", "https:"))]
        problems += [f"{name}: loads {url} from another host" for url in report["loads"]
                     if url.startswith(("http:", "https:"))]
    return problems


# ---------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the documentation site (MkDocs), or check a built one.")
    parser.add_argument("--execute", nargs="*", type=Path, metavar="NOTEBOOK",
                        help="execute the notebooks first (all, or those named); notebooks/ is never changed")
    parser.add_argument("--out", type=Path, default=SITE, help=f"the site's folder (default {SITE.relative_to(ROOT)})")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder no build made")
    parser.add_argument("--check", type=Path, metavar="SITE", help="check a built site in headless Chromium instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s - %(name)s: %(message)s")
    try:
        if args.check:
            problems = site_problems(site_reports(args.check), args.check)
            print("\n".join(problems) or f"{args.check}: every link resolves, every image renders")
            return 1 if problems else 0
        notebooks = args.execute or sorted((ROOT / "notebooks").glob("*.ipynb"))
        missing = [str(p) for p in notebooks if not p.is_file()]
        if missing:
            raise VitInspectError(f"no such notebook: {', '.join(missing)}")
        executed = execute(notebooks) if args.execute is not None else {}
        print(f"site: {build_site(stage(STAGE, executed), args.out, args.force)}")
    except VitInspectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
