"""MkDocs hooks of the documentation site (mkdocs.yml: hooks).

mkdocs-jupyter builds a notebook page's table of contents from the notebook turned into
markdown, where a heading's inline code is left out of its anchor, while the page's heading
keeps it (``## ... timm's `vit_base_patch16_224.orig_in21k_ft_in1k` `` has the id
``...-and-timms-vit_base_patch16_224orig_in21k_ft_in1k``, its entry ``#...-and-timms``).
The entry is pointed at the heading it stands for: the one id on the page that extends it.
"""
from __future__ import annotations

import re


def toc_entries(toc):
    """Every entry of a table of contents, children included."""
    for entry in toc:
        yield entry
        yield from toc_entries(entry.children)


def on_page_content(html: str, page, config, files) -> str:
    """Point each table-of-contents entry without a heading of its id at the one heading whose id extends it."""
    if not page.file.src_path.endswith(".ipynb"):
        return html
    ids = re.findall(r'\bid="([^"]+)"', html)
    for entry in toc_entries(page.toc):
        if entry.id not in ids:
            longer = [i for i in ids if i.startswith(entry.id + "-")]
            if len(longer) == 1:
                entry.id = longer[0]
    return html
