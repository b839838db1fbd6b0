"""Homework from the walk-through notebooks: student versions, and the self-check ``vit-inspect check``.

Shared tooling, not a notebook module. It serves the course's homework, in which
students redo the walk-through's code in a notebook and explain each result:

- :func:`student_version` / :func:`write_homework` (``make homework``) turn a solution
  notebook into the student's: code between nbgrader's markers ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` becomes ``# YOUR CODE HERE`` + ``raise NotImplementedError()``, a
  cell marked as an nbgrader solution without markers (the "explain this result" answers)
  becomes ``YOUR ANSWER HERE``, the hidden tests between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS`` go (they compare with the answer), outputs are cleared, and
  everything else - the shape asserts and the self-check cells - is kept. Same markers and
  cell metadata as nbgrader, so a course that runs nbgrader can use the solution notebooks
  as its source: each task's check cell (``{"vit_inspect": {"check": NAME}}``) is an
  nbgrader autograder-tests cell with points, exercises' check cells are read-only.
- :func:`check_notebook` executes a student's notebook in a fresh kernel, one cell at a
  time. After each task cell (cell metadata ``{"vit_inspect": {"task": NAME}}``) it asks
  :mod:`vit_inspect.homework_tasks`, inside that same kernel, to compare the student's
  variables with the reference; a task whose cell raises is reported with the student's
  error line, and the other tasks are still checked. :func:`format_report` makes the table.

Imports neither torch nor timm: they run in the notebook's kernel.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, NamedTuple

import nbformat

from .errors import VitInspectError

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
TASK_KEY = "vit_inspect"  # cell metadata: {"vit_inspect": {"task": "qkv_split", "block": 8, "names": {...}}}
RESULT_MIME = "application/vnd.vit-inspect.check+json"  # as homework_tasks.RESULT_MIME, without torch
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_LINE = re.compile(r"Cell In\[\d+\], line (\d+)")


# ---------------------------------------------------------------- student versions

def is_solution_cell(cell: nbformat.NotebookNode) -> bool:
    """nbgrader's mark for a cell whose whole content is the answer (``metadata.nbgrader.solution``)."""
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def has_solutions(notebook: nbformat.NotebookNode) -> bool:
    """Whether any cell holds a solution region or is an nbgrader solution cell."""
    return any(is_solution_cell(cell) or any(line.strip() == BEGIN_SOLUTION for line in cell.source.splitlines())
               for cell in notebook.cells)


def clear_solution_regions(source: str, stub: str, where: str,
                           markers: tuple[str, str] = (BEGIN_SOLUTION, END_SOLUTION)) -> tuple[str, bool]:
    """Replace each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region (or other ``markers``) by ``stub``."""
    begin, end = markers
    lines, inside, replaced = [], False, False
    for line in source.split("\n"):
        marker = line.strip()
        if marker == begin:
            if inside:
                raise VitInspectError(f"{where}: {begin} inside another region")
            inside = replaced = True
            indent = line[:len(line) - len(line.lstrip())]
            lines += [indent + stub_line for stub_line in stub.split("\n")] if stub else []
        elif marker == end:
            if not inside:
                raise VitInspectError(f"{where}: {end} without a {begin} before it")
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise VitInspectError(f"{where}: {begin} without an {end}")
    return "\n".join(lines), replaced


def student_version(notebook: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student's copy of a solution notebook (the original is not changed); ``name`` labels errors."""
    student = copy.deepcopy(notebook)
    for index, cell in enumerate(student.cells):
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        cell.source, replaced = clear_solution_regions(cell.source, stub, f"{name} cell {index}")
        cell.source, _ = clear_solution_regions(cell.source, "", f"{name} cell {index}", (BEGIN_HIDDEN, END_HIDDEN))
        if is_solution_cell(cell) and not replaced:
            cell.source = stub
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    student.metadata.pop("widgets", None)
    return student


def write_homework(paths: list[Path], out_dir: Path, force: bool = False,
                   finish: Callable[[nbformat.NotebookNode, Path], nbformat.NotebookNode] | None = None) -> list[Path]:
    """Write the student version of every notebook in ``paths`` that has solutions into ``out_dir``.

    ``finish(notebook, target)``, if given, adjusts each student version before it is
    written (``make homework`` points its Colab badge at it). Returns the files written.
    Writes nothing, with a one-line error, if a file there already exists and ``force``
    is not given, or if no notebook has solution markers.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise VitInspectError(f"{out_dir}: exists and is not a folder")
    notebooks = {path: read_notebook(path) for path in paths}
    chosen = {path: notebook for path, notebook in notebooks.items() if has_solutions(notebook)}
    if not chosen:
        raise VitInspectError(f"none of the {len(paths)} notebooks has solution markers ({BEGIN_SOLUTION})")
    students = {out_dir / path.name: student_version(notebook, path.name) for path, notebook in chosen.items()}
    if finish is not None:
        students = {target: finish(notebook, target) for target, notebook in students.items()}
    existing = [str(target) for target in students if target.exists()]
    if existing and not force:
        raise VitInspectError(f"{existing[0]}: exists ({len(existing)} of {len(students)} student versions do); "
                              "pass --force (make homework FORCE=1) to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, notebook in students.items():
        nbformat.write(notebook, target)
    return list(students)


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A notebook file, or a one-line error naming it."""
    if not path.is_file():
        raise VitInspectError(f"{path}: no such notebook file")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises JSON, validation and encoding errors alike
        raise VitInspectError(f"{path}: not a readable notebook ({type(error).__name__})") from None


# ---------------------------------------------------------------- the self-check

class CheckReport(NamedTuple):
    notebook: str
    weights: str | None          # the notebook's provenance.label, if it printed one
    tasks: list[dict[str, Any]]  # one result per task cell, in notebook order
    other_errors: list[str]      # cells that are not tasks and raised
    stopped: str | None          # why execution stopped early (kernel died), else None

    @property
    def failed(self) -> int:
        """Required tasks that fail; an optional exercise left open does not count."""
        return sum(task["status"] != "pass" for task in self.tasks if not task.get("exercise"))


def task_of(cell: nbformat.NotebookNode) -> dict[str, Any] | None:
    """The task a code cell carries in its metadata (``{"task": NAME, ...params}``), or None."""
    spec = cell.get("metadata", {}).get(TASK_KEY, {})
    return dict(spec) if cell.cell_type == "code" and spec.get("task") else None


def check_of(cell: nbformat.NotebookNode) -> str | None:
    """The task whose graded self-check a code cell is (``{"check": NAME}``), or None."""
    return cell.get("metadata", {}).get(TASK_KEY, {}).get("check") if cell.cell_type == "code" else None


def task_cells(notebook: nbformat.NotebookNode) -> list[int]:
    return [index for index, cell in enumerate(notebook.cells) if task_of(cell)]


def error_of(cell: nbformat.NotebookNode) -> str | None:
    """The student's error, one line: "NameError: name 'q' is not defined (line 3: q @ k)"."""
    error = next((output for output in cell.get("outputs", []) if output.get("output_type") == "error"), None)
    if error is None:
        return None
    message = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".strip().rstrip(":")
    numbers = CELL_LINE.findall(ANSI.sub("", "\n".join(error.get("traceback", []))))
    lines = cell.source.splitlines()
    if numbers and 0 < int(numbers[-1]) <= len(lines):
        code = lines[int(numbers[-1]) - 1].strip()
        message += f" (line {numbers[-1]}: {code if len(code) <= 60 else code[:57] + '...'})"
    return message


def _kernel_call(function: str, *arguments: str) -> nbformat.NotebookNode:
    """A cell that calls ``homework_tasks.FUNCTION(ARGUMENTS)`` in the student's kernel, leaving no name behind."""
    call = f"__import__('vit_inspect.homework_tasks').homework_tasks.{function}({', '.join(arguments)})"
    return nbformat.v4.new_code_cell(call)


def _result_of(check_cell: nbformat.NotebookNode, spec: dict[str, Any]) -> dict[str, Any]:
    for output in check_cell.get("outputs", []):
        if RESULT_MIME in output.get("data", {}):
            result = output["data"][RESULT_MIME]
            return json.loads(result) if isinstance(result, str) else dict(result)
    problem = error_of(check_cell) or "no answer"
    return {"task": spec["task"], "title": spec["task"], "status": "fail", "checks": [],
            "advice": f"the checker could not run in this notebook's kernel ({problem}); "
                      "is vit-inspect installed where the notebook runs?"}


def notebook_client(notebook: nbformat.NotebookNode, path: Path, timeout: int):
    """An nbclient NotebookClient on a kernel of this Python, in ``path``'s folder, that keeps going after errors."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    class ThisPython(KernelSpecManager):
        """The kernel runs this very Python, so it imports this vit-inspect (as nbval's --nbval-current-env)."""

        def get_kernel_spec(self, kernel_name: str):
            from ipykernel.kernelspec import RESOURCES, get_kernel_dict
            return self.kernel_spec_class(resource_dir=RESOURCES, **get_kernel_dict())

    # nbclient needs the asynchronous manager: with a blocking client a dead kernel would hang it
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    return NotebookClient(notebook, km=manager, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                          record_timing=False, resources={"metadata": {"path": str(path.parent.resolve())}})


def read_homework(path: Path) -> nbformat.NotebookNode:
    """A notebook with at least one task cell, or a one-line error naming the file."""
    notebook = read_notebook(path)
    if not task_cells(notebook):
        raise VitInspectError(f"{path}: no cell is a homework task (cell metadata '{TASK_KEY}': {{'task': ...}})")
    return notebook


def check_notebook(path: Path, timeout: int = 300) -> CheckReport:
    """Execute a student's notebook (offline, whatever weights it finds) and check every task cell.

    Each task cell runs with its variables cleared first; right after it, the kernel
    compares them with the reference (:func:`vit_inspect.homework_tasks.check_task`). A cell
    that raises fails its task with the student's error line; the reference then takes
    the place of its variables so that later tasks are checked on their own.
    """
    notebook = read_homework(path)
    try:
        client = notebook_client(notebook, path, timeout)
    except ImportError as error:
        raise VitInspectError(f"vit-inspect check needs nbclient and ipykernel ({error.name} is missing): "
                              "pip install nbclient ipykernel") from None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    tasks, other_errors = [], []
    try:
        # the kernel's own stderr carries only its start-up chatter; the cells' output comes over its channels
        with client.setup_kernel(env=env, cleanup_kc=True, stderr=subprocess.DEVNULL):
            stopped = _run_cells(client, notebook, tasks, other_errors)
    except Exception as error:  # a kernel that cannot start (a dead one mid-run is handled in _run_cells)
        raise VitInspectError(f"{path}: the notebook's Python kernel failed ({type(error).__name__}: {error})") from None
    weights = next((task.get("weights") for task in tasks if task.get("weights")), None)
    return CheckReport(str(path), weights, tasks, other_errors, stopped)


def _run_cells(client, notebook: nbformat.NotebookNode, tasks: list, other_errors: list) -> str | None:
    from nbclient.exceptions import DeadKernelError

    specs = [task_of(cell) for cell in notebook.cells]  # read first: nbclient stores what it runs at its index
    checks = [check_of(cell) for cell in notebook.cells]
    count = 0
    for index, (cell, spec, check) in enumerate(zip(notebook.cells, specs, checks)):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        count += 1
        try:
            if spec:
                params = {key: value for key, value in spec.items() if key != "task"}
                forget = _kernel_call("forget_outputs", repr(spec["task"]), "globals()", repr(params))
                client.execute_cell(forget, index, store_history=False)
            client.execute_cell(cell, index, execution_count=count)
            if spec:
                check = _kernel_call("report_task", repr(spec["task"]), "globals()", repr(cell.source), repr(params))
                client.execute_cell(check, index, store_history=False)
                tasks.append({**_result_of(check, spec), "cell": count, "error": error_of(cell),
                              "exercise": bool(spec.get("exercise"))})
            elif check and tasks and tasks[-1]["task"] == check:
                _fail_on_graded_check(tasks[-1], cell, count)
            elif error_of(cell):
                other_errors.append(f"In [{count}]: {error_of(cell)}")
        except DeadKernelError:
            tasks += [{"task": later["task"], "title": later["task"], "status": "fail", "cell": None, "checks": [],
                       "error": None, "advice": "not run: the kernel died", "exercise": bool(later.get("exercise"))}
                      for later in specs[index:] if later]
            return f"the kernel died at In [{count}] (out of memory?); the tasks from there on were not run"
    return None


def _fail_on_graded_check(task: dict[str, Any], cell: nbformat.NotebookNode, count: int) -> None:
    """A task that passed fails when its graded cell (the self-check and nbgrader's hidden tests) raised."""
    error = error_of(cell)
    if error and task["status"] == "pass":
        task.update(status="fail", advice=f"its graded check (In [{count}]) failed: {error}")


# ---------------------------------------------------------------- the table

def _shape(shape: list[int]) -> str:
    return str(tuple(shape)) if shape else "(a number)"


def _found(task: dict[str, Any]) -> str:
    """What the checker saw, in one line."""
    if task.get("error"):
        return task["error"]
    checks = task.get("checks", [])
    if task["status"] == "pass" or not checks:
        shapes = ", ".join(f"{c['name']} {_shape(c.get('shape', c['expected_shape']))}" for c in checks)
        return (shapes + " match the reference") if shapes else task.get("advice", "")
    parts = []
    for status, words in (("missing", "not assigned"), ("not_tensor", "not a tensor"), ("shape", "wrong shape"),
                          ("values", "right shape, other values")):
        names = [c["name"] for c in checks if c["status"] == status]
        if names:
            parts.append(f"{', '.join(names)}: {words}")
    return "; ".join(parts) or "the values match the reference, but see the advice"


def _advice(task: dict[str, Any]) -> str:
    error = task.get("error") or ""
    if error.startswith("NotImplementedError") and not task.get("mistake"):
        names = ", ".join(f"{c['name']} {_shape(c['expected_shape'])}" for c in task.get("checks", []))
        return f"not solved yet: write your code in place of `raise NotImplementedError()`; it must assign {names}"
    return task.get("advice") or "the cell raised an error: fix the line above"


def format_report(report: CheckReport) -> str:
    """The check as a table: one row per task, one line of advice under each failure."""
    lines = [f"vit-inspect check: {report.notebook}"]
    if report.weights:
        lines.append(f"weights in the notebook: {report.weights} (the checks compare arithmetic, "
                     "which holds for any weights)")
    width = max(len(task["title"]) for task in report.tasks)
    lines += ["", f"  {'cell':<8}{'task':<{width + 2}}result"]
    for task in report.tasks:
        cell = f"In [{task['cell']}]" if task.get("cell") else "-"
        result = "PASS" if task["status"] == "pass" else "(exercise)" if task.get("exercise") else "FAIL"
        lines.append(f"  {cell:<8}{task['title']:<{width + 2}}{result}  {_found(task)}")
        if task["status"] != "pass":
            lines.append(f"  {'':<8}{'':<{width + 2}}      advice: {_advice(task)}")
    lines.append("")
    if report.other_errors:
        lines += ["other cells that raised (not tasks):"] + [f"  {error}" for error in report.other_errors] + [""]
    if report.stopped:
        lines += [report.stopped, ""]
    required = [task for task in report.tasks if not task.get("exercise")]
    exercises = [task for task in report.tasks if task.get("exercise")]
    done = sum(task["status"] == "pass" for task in exercises)
    lines.append(f"{len(required) - report.failed} of {len(required)} tasks pass."
                 + (f" Optional exercises: {done} of {len(exercises)} done." if exercises else "")
                 + (" A failed task's variables were replaced by the reference, so each task after it is checked on "
                    "its own." if report.failed or done < len(exercises) else ""))
    return "\n".join(lines)
