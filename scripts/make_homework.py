"""Write the student versions of the walk-through notebooks (``make homework``).

Solutions between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` become ``# YOUR CODE HERE`` +
``raise NotImplementedError()``, the answers to "explain this result" become ``YOUR ANSWER
HERE``, outputs are cleared (see vit_inspect/homework.py). Each student version carries the
Colab setup cell and a badge that opens it from the repository (when --out lies inside the
repository; elsewhere there is no address to link to, so no badge). Notebooks without
solution markers are skipped. An existing file is never overwritten without --force.

    python scripts/make_homework.py --out homework [--force] notebooks/*.ipynb
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from colab_setup import path_in_repo, repository_url, with_colab

from vit_inspect.errors import VitInspectError
from vit_inspect.homework import has_solutions, read_notebook, write_homework


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Student versions of solution notebooks.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("homework"), help="folder (default: homework)")
    parser.add_argument("--force", action="store_true", help="overwrite existing student versions")
    args = parser.parse_args(argv)
    repository = repository_url()

    def colab(notebook, target: Path):
        return with_colab(notebook, path_in_repo(target), repository, target.name)

    try:
        skipped = [path.name for path in args.notebooks if not has_solutions(read_notebook(path))]
        written = write_homework(args.notebooks, args.out, args.force, finish=colab)
    except VitInspectError as error:
        print(f"make_homework: error: {error}", file=sys.stderr)
        return 1
    for target in written:
        print(f"wrote {target}")
    if skipped:
        print(f"skipped (no solution markers): {', '.join(skipped)}")
    if path_in_repo(args.out) is None:
        print(f"{args.out} is outside the repository: no Colab badge (students upload the file to Colab)")
    print("students check their work with: vit-inspect check NOTEBOOK.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
