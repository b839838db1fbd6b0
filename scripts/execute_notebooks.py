"""Re-execute notebooks in place, keeping only the outputs that do not depend on weights.

Cells tagged ``nbval-check-output`` (shapes, parameter counts, configs) keep their
outputs, which nbval then re-checks in ``make test``; every other output is cleared,
so no picture or number computed from untrained weights is ever committed. A notebook
whose metadata says ``{"vit_inspect": {"outputs": "trained here"}}`` trains its own
model, so it keeps every output (stderr aside): its figures are real.

    python scripts/execute_notebooks.py notebooks/*.ipynb
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KEEP_TAG = "nbval-check-output"
TRAINED_HERE = "trained here"  # notebook.metadata["vit_inspect"]["outputs"]: keep every output


def keeps_all_outputs(notebook: nbformat.NotebookNode) -> bool:
    return notebook.get("metadata", {}).get("vit_inspect", {}).get("outputs") == TRAINED_HERE


def keeps_output(cell: nbformat.NotebookNode) -> bool:
    return KEEP_TAG in cell.get("metadata", {}).get("tags", [])


def execute_in_place(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    keep_all = keeps_all_outputs(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code" and not (keep_all or keeps_output(cell)):
            cell.execution_count, cell.outputs = None, []
        elif cell.cell_type == "code":  # nbval needs the count to treat the outputs as run
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    print(f"executed {path}")


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        sys.exit("usage: execute_notebooks.py NOTEBOOK.ipynb ...")
    for notebook_path in paths:
        execute_in_place(notebook_path)
