"""Student versions (make homework) and the self-check (vit-inspect check) on small homework notebooks.

The notebooks come from tests/homework_notebooks.py: the five course tasks on the tiny
untrained ViT, solved, blanked by the converter, or with the course's classic mistakes.
Each `check` runs one fresh kernel; there are six such runs in this file: four on the small notebooks, and two on
the real notebook 03 (solved and blank, about a minute each on a 2-core CPU, ViT-B/16 untrained). The other tests of
the real notebooks read them without running them.
"""
from __future__ import annotations

import ast
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vit_inspect.cli import main
from vit_inspect.errors import VitInspectError
from vit_inspect.homework import (BEGIN_HIDDEN, BEGIN_SOLUTION, CODE_STUB, END_HIDDEN, END_SOLUTION, TEXT_STUB,
                                  CheckReport, check_notebook, check_of, error_of, format_report, has_solutions,
                                  is_solution_cell, student_version, task_of, write_homework)
from vit_inspect.homework_tasks import TASKS, helpers_called, variable

from .homework_notebooks import HIDDEN_TESTS, MISTAKES, TASK_CODE, solution_notebook

CLASSIC = ("patch_split", "qkv_split", "attention")  # the course's three classic mistakes, in MISTAKES

ROOT = Path(__file__).resolve().parent.parent
TASK_NAMES = list(TASK_CODE)


def solution_lines(notebook) -> list[str]:
    """The non-blank lines strictly inside solution regions, and whole nbgrader answers."""
    lines = []
    for cell in notebook.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution") and BEGIN_SOLUTION not in cell.source:
            lines += [line for line in cell.source.splitlines() if line.strip()]
        inside = False
        for line in cell.source.splitlines():
            if line.strip() in (BEGIN_SOLUTION, END_SOLUTION):
                inside = line.strip() == BEGIN_SOLUTION
            elif inside and line.strip():
                lines.append(line)
    return lines


def hidden_lines(notebook) -> list[str]:
    """The lines of nbgrader's hidden tests, markers included: they leave the student version."""
    lines = []
    for cell in notebook.cells:
        inside = False
        for line in cell.source.splitlines():
            if line.strip() == BEGIN_HIDDEN:
                inside = True
            if inside:
                lines.append(line)
            if line.strip() == END_HIDDEN:
                inside = False
    return lines


def code_lines(notebook) -> list[str]:
    return [line for cell in notebook.cells for line in cell.source.splitlines()]


# ---------------------------------------------------------------- student versions

def test_student_version_leaves_no_solution_text():
    solved = solution_notebook()
    student = student_version(solved)
    left = set(solution_lines(solved)) & set(code_lines(student))
    assert not left, f"solution text left in the student version: {sorted(left)[:3]}"
    text = "\n".join(cell.source for cell in student.cells)
    assert BEGIN_SOLUTION not in text and END_SOLUTION not in text
    assert BEGIN_HIDDEN not in text and not any(test in text for test in HIDDEN_TESTS.values()), \
        "the hidden tests compare with the answer: they leave the student version"
    assert text.count('check_answer("') == len(TASK_CODE), "the self-check stays"
    assert text.count(CODE_STUB) == len(TASK_CODE), "one stub per solution region"
    assert [c.source for c in student.cells if c.cell_type == "markdown" and "nbgrader" in c.metadata] == \
        [TEXT_STUB, TEXT_STUB], "each 'explain this result' answer becomes YOUR ANSWER HERE"


def test_student_version_keeps_the_asserts_and_every_given_line():
    solved = solution_notebook()
    student_lines = code_lines(student_version(solved))
    given = [line for line in code_lines(solved) if line not in solution_lines(solved) + hidden_lines(solved)
             and line.strip() not in (BEGIN_SOLUTION, END_SOLUTION)]
    assert [line for line in student_lines if line not in CODE_STUB.splitlines() + [TEXT_STUB]] == given
    asserts = [line for line in given if line.lstrip().startswith(("assert", "assert_close"))]
    assert len(asserts) == 6 and all(line in student_lines for line in asserts)


def test_student_version_clears_outputs_and_keeps_task_metadata():
    solved = solution_notebook()
    kept = solved.cells[2]
    kept.metadata["tags"] = ["nbval-check-output"]
    kept.outputs = [nbformat.v4.new_output("stream", name="stdout", text="UNTRAINED ...\n")]
    kept.execution_count = 3
    student = student_version(solved)
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    assert [task_of(c)["task"] for c in student.cells if task_of(c)] == TASK_NAMES
    assert [check_of(c) for c in student.cells if check_of(c)] == TASK_NAMES, "each task keeps its graded check"
    assert solved.cells[2].outputs, "the solution notebook itself is not changed"


def test_stubs_take_the_indentation_of_their_markers():
    cell = new_code_cell("def f(x):\n    y = x + 1\n    ### BEGIN SOLUTION\n    return y\n    ### END SOLUTION")
    student = student_version(new_notebook(cells=[cell]))
    assert student.cells[0].source == "def f(x):\n    y = x + 1\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_nbgrader_solution_cells_without_markers_are_replaced_whole():
    cells = [new_code_cell("answer = 42", metadata={"nbgrader": {"solution": True}}),
             new_markdown_cell("Because ...", metadata={"nbgrader": {"solution": True}}),
             new_markdown_cell("**Explain** why.\n\n### BEGIN SOLUTION\nBecause ...\n### END SOLUTION")]
    student = student_version(new_notebook(cells=cells))
    assert [c.source for c in student.cells] == [CODE_STUB, TEXT_STUB, f"**Explain** why.\n\n{TEXT_STUB}"]


@pytest.mark.parametrize("source, problem", [
    ("### BEGIN SOLUTION\nx = 1", "without an ### END SOLUTION"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "inside another"),
    ("x = 1\n### END SOLUTION", "without a ### BEGIN SOLUTION"),
])
def test_broken_markers_name_the_notebook_and_cell(source, problem):
    notebook = new_notebook(cells=[new_markdown_cell("# t"), new_code_cell(source)])
    with pytest.raises(VitInspectError, match=rf"^01_x\.ipynb cell 1: .*{problem}"):
        student_version(notebook, "01_x.ipynb")


def write(path: Path, notebook) -> Path:
    nbformat.write(notebook, path)
    return path


def test_write_homework_never_overwrites_without_force(tmp_path):
    solved = write(tmp_path / "01_tasks.ipynb", solution_notebook())
    plain = write(tmp_path / "02_plain.ipynb", new_notebook(cells=[new_code_cell("x = 1")]))
    out = tmp_path / "homework"
    assert write_homework([solved, plain], out) == [out / "01_tasks.ipynb"], "no markers: skipped"
    (out / "01_tasks.ipynb").write_text("the student's work")
    with pytest.raises(VitInspectError, match="exists .*--force"):
        write_homework([solved], out)
    assert (out / "01_tasks.ipynb").read_text() == "the student's work"
    write_homework([solved], out, force=True)
    assert has_solutions(solved_nb := nbformat.read(solved, as_version=4))
    assert nbformat.read(out / "01_tasks.ipynb", as_version=4) == student_version(solved_nb, "01_tasks.ipynb")


def test_write_homework_refuses_what_it_cannot_do(tmp_path):
    plain = write(tmp_path / "plain.ipynb", new_notebook(cells=[new_code_cell("x = 1")]))
    with pytest.raises(VitInspectError, match="none of the 1 notebooks has solution markers"):
        write_homework([plain], tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(VitInspectError, match="not a folder"):
        write_homework([plain], tmp_path / "file")
    with pytest.raises(VitInspectError, match="missing.ipynb: no such notebook"):
        write_homework([tmp_path / "missing.ipynb"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_make_homework_script(tmp_path):
    solved = write(tmp_path / "01_tasks.ipynb", solution_notebook())
    out = tmp_path / "homework"
    command = [sys.executable, str(ROOT / "scripts" / "make_homework.py"), "--out", str(out), str(solved)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    student = nbformat.read(out / "01_tasks.ipynb", as_version=4)
    assert "colab-setup" in student.cells[1].metadata["tags"], "the student version carries the Colab cell"
    assert "Open In Colab" not in student.cells[0].source, "outside the repository there is no address to link"
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    forced = subprocess.run(command + ["--force"], capture_output=True, text=True, env=env, timeout=120)
    assert forced.returncode == 0, forced.stderr


# ---------------------------------------------------------------- the self-check

def rows(output: str) -> dict[str, list[str]]:
    """Table rows by task title: the row and, for a failure, its advice line."""
    lines = output.splitlines()
    found = {}
    for i, line in enumerate(lines):
        if re.match(r"\s+In \[\d+\]\s", line):  # not "In [12]: NameError" under "other cells"
            title = line.split("]", 1)[1].strip().split("  ")[0]
            found[title] = [line] + ([lines[i + 1]] if i + 1 < len(lines) and "advice:" in lines[i + 1] else [])
    return found


def test_check_of_a_solved_notebook_passes_every_task(tmp_path, capsys):
    path = write(tmp_path / "solved.ipynb", solution_notebook())
    assert main(["check", str(path)]) == 0
    output = capsys.readouterr().out
    table = rows(output)
    assert len(table) == 5 and all("PASS" in row[0] and len(row) == 1 for row in table.values()), output
    assert "UNTRAINED" in output and "5 of 5 tasks pass." in output and "Traceback" not in output


def test_check_of_the_blank_notebook_fails_every_task_clearly(tmp_path, capsys):
    path = write(tmp_path / "blank.ipynb", student_version(solution_notebook()))
    assert main(["check", str(path)]) == 1
    output = capsys.readouterr().out
    table = rows(output)
    assert len(table) == 5, output
    for row, advice in table.values():
        assert "FAIL" in row and "NotImplementedError (line" in row and "raise NotImplementedError()" in row
        assert "not solved yet" in advice
    assert "0 of 5 tasks pass." in output and "Traceback" not in output
    assert "other cells that raised" not in output, "the reference took the place of each blank's variables"


@pytest.fixture(scope="module")
def mistakes_report(tmp_path_factory) -> CheckReport:
    path = tmp_path_factory.mktemp("mistakes") / "mistakes.ipynb"
    write(path, solution_notebook(MISTAKES, extra_cells=("print(no_such_name)",)))
    return check_notebook(path)


def test_check_names_each_classic_mistake(mistakes_report):
    results = {task["task"]: task for task in mistakes_report.tasks}
    assert list(results) == TASK_NAMES
    assert {name: results[name]["mistake"] for name in CLASSIC} == \
        {"patch_split": "original_image", "qkv_split": "skip_norm1", "attention": "no_scale"}
    assert [results[name]["status"] for name in TASK_NAMES] == ["fail", "fail", "fail", "fail", "pass"]
    similarity, = results["pos_similarity"]["checks"]
    assert similarity["status"] == "missing", "a value left by an earlier cell must not pass for the student's"
    assert results["patch_split"]["error"].startswith("AssertionError: one row of C*P*P values per patch (line")
    assert results["qkv_split"]["error"] is None, "a mistake that raises nothing is found by its values"


def test_check_table_gives_one_line_of_advice_per_failure(mistakes_report):
    output = format_report(mistakes_report)
    table = rows(output)
    assert "un-resized" in table["patch split"][1] and "LayerNorm" in table["qkv reshape and split"][1]
    assert "1/sqrt(d)" in table["scaled softmax attention"][1]
    assert [len(row) for row in table.values()] == [2, 2, 2, 2, 1]
    assert "In [17]: NameError: name 'no_such_name' is not defined (line 1: print(no_such_name))" in output
    assert "1 of 5 tasks pass." in output and "Traceback" not in output


def test_check_survives_a_kernel_that_dies(tmp_path):
    cells = [new_markdown_cell("# t"), new_code_cell("import os"),
             new_code_cell("os._exit(1)", metadata={"vit_inspect": {"task": "patch_split"}}),
             new_code_cell("patches = 1", metadata={"vit_inspect": {"task": "patch_split"}})]
    report = check_notebook(write(tmp_path / "dies.ipynb", new_notebook(cells=cells)))
    assert report.stopped.startswith("the kernel died at In [2]") and "not run" in report.tasks[1]["advice"]
    assert [task["status"] for task in report.tasks] == ["fail", "fail"]
    assert "the kernel died" in format_report(report)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.ipynb", "no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "not a notebook (expected a .ipynb"),
    (lambda d: (d / "bad.ipynb").write_text("{not json") and d / "bad.ipynb", "not a readable notebook"),
    (lambda d: write(d / "plain.ipynb", new_notebook(cells=[new_code_cell("x = 1")])), "no cell is a homework task"),
])
def test_check_argument_errors_are_one_line(tmp_path, capsys, make, message):
    assert main(["check", str(make(tmp_path))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vit-inspect: error: ") and message in err[0]


def test_check_argument_errors_import_no_torch(tmp_path):
    code = (f"import sys\nfrom vit_inspect.cli import main\nassert main(['check', {str(tmp_path / 'x.ipynb')!r}]) == 1\n"
            "assert not {'torch', 'timm'} & set(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr


def test_error_line_comes_from_the_students_cell():
    cell = new_code_cell("a = 1\nq = qkv.reshape(1, 197, 3, 12, 64)  # (B, N, 3, H, d)\nb = 2")
    cell.outputs = [nbformat.v4.new_output("error", ename="RuntimeError", evalue="shape '[1, 197, 3, 12, 64]' is "
                                           "invalid for input of size 10", traceback=[
        "\x1b[0;31mRuntimeError\x1b[0m  Traceback (most recent call last)",
        "Cell \x1b[0;32mIn[7], line 3\x1b[0m\n\x1b[1;32m----> 3\x1b[0m b = f()",
        "Cell \x1b[0;32mIn[7], line 2\x1b[0m\n\x1b[1;32m----> 2\x1b[0m q = qkv.reshape(...)",
        "File torch/_tensor.py, line 99, in reshape"])]
    assert error_of(cell) == ("RuntimeError: shape '[1, 197, 3, 12, 64]' is invalid for input of size 10 "
                              "(line 2: q = qkv.reshape(1, 197, 3, 12, 64)  # (B, N, 3, H, d))")
    assert error_of(new_code_cell("x = 1")) is None


# ---------------------------------------------------------------- the real notebooks

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WALKTHROUGHS = [path for path in NOTEBOOKS if has_solutions(nbformat.read(path, as_version=4))]
QUESTION = "**Explain this result.**"


def test_the_walkthrough_notebooks_carry_solutions():
    """01-08 are homework; a notebook without markers (the explorer, or a new one) is simply not."""
    names = {path.stem[:2] for path in WALKTHROUGHS}
    assert {"01", "02", "03", "04", "05", "06", "07", "08"} <= names and "10" not in names


def solution_assignments(source: str) -> set[str]:
    """Names assigned inside the cell's solution region."""
    inside, lines = False, []
    for line in source.splitlines():
        if line.strip() in (BEGIN_SOLUTION, END_SOLUTION):
            inside = line.strip() == BEGIN_SOLUTION
        elif inside:
            lines.append(line)
    tree = ast.parse("\n".join(lines))
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_task_cells_name_a_known_task_and_assign_its_variables_by_hand(path):
    notebook = nbformat.read(path, as_version=4)
    grade_ids = [cell.metadata["nbgrader"]["grade_id"] for cell in notebook.cells if "nbgrader" in cell.metadata]
    assert len(grade_ids) == len(set(grade_ids)), f"{path.name}: nbgrader needs unique grade_ids"
    cells = [cell for cell in notebook.cells if task_of(cell)]
    assert cells, f"{path.name}: solution markers but no task cell"
    for cell in cells:
        spec = task_of(cell)
        task = TASKS[spec["task"]]
        assert cell.metadata["nbgrader"]["solution"] and not cell.metadata["nbgrader"]["grade"], "an autograded answer"
        assert cell.source.count(BEGIN_SOLUTION) == cell.source.count(END_SOLUTION) == 1
        wanted = {variable(output, spec) for output in task.outputs}
        assert wanted <= solution_assignments(cell.source), f"{path.name}: {spec} must assign {sorted(wanted)}"
        assert helpers_called(task, cell.source) == [], f"{path.name}: the {spec['task']} cell uses the helper itself"
        after = cell.source.split(END_SOLUTION)[1]
        assert "assert" in after, f"{path.name}: the {spec['task']} cell checks the student's tensors after the markers"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_each_task_cell_is_followed_by_its_graded_check(path):
    """nbgrader autograder tests with points for a task, read-only for an exercise; the answer only in hidden tests."""
    cells = nbformat.read(path, as_version=4).cells
    for index, cell in enumerate(cells):
        spec = task_of(cell)
        if not spec:
            continue
        check = cells[index + 1]
        grading = check.metadata["nbgrader"]
        assert check_of(check) == spec["task"], f"{path.name} cell {index + 1}: the check of {spec['task']}"
        assert grading["locked"] and not grading["solution"] and grading["grade_id"].endswith("_check")
        assert grading["grade"] == (not spec.get("exercise")) and grading.get("points", 0) == (0 if spec.get(
            "exercise") else 1), f"{path.name} cell {index + 1}: points for a task, none for an exercise"
        params = {key: value for key, value in spec.items() if key not in ("task", "exercise")}
        call = ast.parse(check.source.split(BEGIN_HIDDEN)[0]).body[0].value
        assert call.func.id == "check_answer" and ast.literal_eval(call.args[0]) == spec["task"]
        assert {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords} == params
        given = cell.source.split(BEGIN_SOLUTION)[0]
        assert "expected" not in given, f"{path.name} cell {index}: a reference above the blank"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_answers_follow_their_question_and_exercises_end_the_notebook(path):
    cells = nbformat.read(path, as_version=4).cells
    answers = [i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and is_solution_cell(cell)]
    assert answers, f"{path.name}: no 'explain this result' answer"
    for i in answers:
        question = next(cell for cell in reversed(cells[:i]) if cell.cell_type == "markdown")
        assert question.source.startswith(QUESTION), f"{path.name} cell {i}: an answer follows its question"
        assert cells[i].metadata["nbgrader"]["grade"] and cells[i].metadata["nbgrader"]["points"] > 0
    exercises = [i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and cell.source.startswith("## Exercises")]
    assert len(exercises) == 1, f"{path.name}: one ## Exercises section"
    items = re.findall(r"^\d+\. ", cells[exercises[0]].source, flags=re.MULTILINE)
    assert 3 <= len(items) <= 5, f"{path.name}: 3-5 exercises, found {len(items)}"
    assert all(task_of(cell) or check_of(cell) for cell in cells[exercises[0] + 1:]), \
        f"{path.name}: after the exercises, starter cells and their checks only"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_student_version_of_a_real_notebook(path):
    """No solution text left, every task cell raises, every answer blank, every given line (the asserts) kept."""
    solved = nbformat.read(path, as_version=4)
    student = student_version(solved, path.name)
    left = set(solution_lines(solved)) & set(code_lines(student))
    assert not left, f"{path.name}: solution text left: {sorted(left)[:3]}"
    stubs = CODE_STUB.splitlines() + [TEXT_STUB]
    for before, after in zip(solved.cells, student.cells):
        assert after.cell_type == "markdown" or (after.outputs == [] and after.execution_count is None)
        if is_solution_cell(before) and before.cell_type == "markdown":
            assert after.source == TEXT_STUB, "an answer becomes YOUR ANSWER HERE"
            continue
        if task_of(before):
            assert CODE_STUB in after.source, "a blank task raises NotImplementedError"
        hidden = hidden_lines(new_notebook(cells=[before]))
        given = [line for line in before.source.splitlines() if line.strip() and line not in solution_lines(solved)
                 and line not in hidden and line.strip() not in (BEGIN_SOLUTION, END_SOLUTION)]
        assert [line for line in after.source.splitlines() if line.strip() and line not in stubs] == given, \
            f"{path.name}: a given line changed"
    assert student.cells[1].metadata.get("tags") == ["colab-setup"], "the student version keeps the Colab cell"


def test_docs_list_the_tasks_of_every_notebook():
    page = (ROOT / "docs" / "homework.md").read_text()
    section = page.split("## Tasks per notebook", 1)[1].split("\n#", 1)[0]
    listed = {match.group(1): re.findall(r"`(\w+)`", match.group(2))
              for match in re.finditer(r"^\| `(\d\d_\w+)` \| ([^|]*) \|", section, flags=re.MULTILINE)}
    found = {path.stem: [task_of(cell)["task"] for cell in nbformat.read(path, as_version=4).cells if task_of(cell)]
             for path in WALKTHROUGHS}
    assert listed == found, "docs/homework.md: the tasks per notebook are the notebooks' task cells, in order"


@pytest.fixture(scope="module")
def notebook_03_checked(tmp_path_factory) -> tuple[CheckReport, CheckReport]:
    """vit-inspect check on notebook 03 as committed (the solution) and on its student version: two kernel runs."""
    solved = ROOT / "notebooks" / "03_attention_by_hand.ipynb"
    blank = tmp_path_factory.mktemp("homework") / solved.name
    write(blank, student_version(nbformat.read(solved, as_version=4), solved.name))
    return check_notebook(solved), check_notebook(blank)


def test_check_passes_every_task_of_the_solved_notebook_03(notebook_03_checked):
    solved, _ = notebook_03_checked
    assert [task["task"] for task in solved.tasks] == ["qkv_split", "attention", "qkv_split"]
    assert solved.failed == 0 and not solved.other_errors and solved.stopped is None, format_report(solved)


def test_check_fails_every_task_of_the_blank_notebook_03_clearly(notebook_03_checked):
    _, blank = notebook_03_checked
    output = format_report(blank)
    table = rows(output)
    assert list(table) == ["qkv reshape and split", "scaled softmax attention", "qkv reshape and split (block 8)"]
    for title, (row, advice) in table.items():
        label = "(exercise)" if title.endswith("(block 8)") else "FAIL"
        assert label in row and "NotImplementedError (line" in row and "not solved yet" in advice
    assert not blank.other_errors, "the reference takes the place of each blank's variables: no later cell fails"
    assert "0 of 2 tasks pass. Optional exercises: 0 of 1 done." in output and "Traceback" not in output


# ---------------------------------------------------------------- nbgrader agrees

# a copied submission: the package's helper under another name, a copy of what a given cell left, the model's forward
COPIED = {"patch_split": "cut = patchify\npatches = cut(x, P)  # (B, N, C*P*P)",
          "pos_similarity": "similarity = similarity * 1  # (gh, gw, gh, gw)",
          "top5": "logits = model(x)  # (B, C)\nprobs = logits.softmax(dim=-1)  # (B, C)\n"
                  "top5_probs, top5_indices = probs.topk(5, dim=-1)  # (B, 5) each"}


def submission(answers: dict[str, str]) -> nbformat.NotebookNode:
    """The student version with ``answers`` (task -> code) in place of the stubs; the others left blank."""
    source = solution_notebook()
    student = student_version(source)
    for cell in student.cells:
        if task_of(cell) and task_of(cell)["task"] in answers:
            cell.source = cell.source.replace(CODE_STUB, answers[task_of(cell)["task"]])
    return student


def autograded(submitted: nbformat.NotebookNode, source: nbformat.NotebookNode, folder: Path) -> dict[str, float]:
    """nbgrader's autograde on a submission: its graded cells back from the source (what its OverwriteCells does,
    hidden tests included), run by nbgrader's Execute preprocessor, scored by nbgrader's determine_grade."""
    from nbgrader.preprocessors import Execute
    from nbgrader.utils import determine_grade, is_grade

    graded = {cell.metadata["nbgrader"]["grade_id"]: cell for cell in source.cells if is_grade(cell)}
    notebook = nbformat.from_dict(copy.deepcopy(submitted))
    for index, cell in enumerate(notebook.cells):
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in graded and cell.cell_type == "code":
            notebook.cells[index] = copy.deepcopy(graded[grade_id])
    Execute().preprocess(notebook, {"metadata": {"path": str(folder)}})
    return {check_of(cell): determine_grade(cell)[0] for cell in notebook.cells if check_of(cell)}


@pytest.mark.parametrize("answers, passing", [
    ({task: code for task, (_, code, _) in TASK_CODE.items()}, TASK_NAMES),
    ({}, []),
    ({**{task: code for task, (_, code, _) in TASK_CODE.items()}, **COPIED}, ["qkv_split", "attention"]),
], ids=["solved", "blank", "copied"])
def test_nbgrader_autograde_and_vit_inspect_check_agree(tmp_path, answers, passing):
    """Per task: nbgrader's points (1 or 0) for the graded check cell, and PASS/FAIL of vit-inspect check."""
    submitted = submission(answers)
    path = write(tmp_path / "submitted.ipynb", submitted)
    checked = {task["task"]: task["status"] == "pass" for task in check_notebook(path).tasks}
    points = autograded(submitted, solution_notebook(), tmp_path)
    assert checked == {task: task in passing for task in TASK_NAMES}
    assert points == {task: float(task in passing) for task in TASK_NAMES}, "nbgrader scores what the check says"


def test_the_student_version_is_nbgraders_release_version():
    """nbgrader's own ClearSolutions and ClearHiddenTests make the same code cells as make homework."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    source = solution_notebook()
    released, _ = ClearHiddenTests().preprocess(*ClearSolutions().preprocess(copy.deepcopy(source), {}))
    ours = student_version(source)
    assert [c.source for c in released.cells if c.cell_type == "code"] == \
        [c.source for c in ours.cells if c.cell_type == "code"]


def test_an_open_exercise_is_labelled_and_not_counted_as_a_failure():
    checks = [{"name": "patches", "output": "patches", "status": "match", "expected_shape": [1, 196, 768]}]
    tasks = [{"task": "patch_split", "title": "patch split", "status": "pass", "cell": 3, "checks": checks},
             {"task": "patch_split", "title": "patch split (patch_size 32)", "status": "fail", "cell": 9,
              "checks": [], "exercise": True, "error": "NotImplementedError (line 3: raise NotImplementedError())"}]
    report = CheckReport("nb.ipynb", None, tasks, [], None)
    output = format_report(report)
    row = rows(output)["patch split (patch_size 32)"]
    assert "(exercise)" in row[0] and "FAIL" not in row[0] and "advice:" in row[1]
    assert report.failed == 0 and "1 of 1 tasks pass. Optional exercises: 0 of 1 done." in output


def test_a_task_fails_when_its_graded_check_cell_raises():
    """nbgrader scores the check cell (self-check and hidden tests): a failure there fails the task's row too."""
    from vit_inspect.homework import _fail_on_graded_check
    cell = new_code_cell('check_answer("top5")')
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="the head by hand equals model(x)",
                                           traceback=["Cell In[9], line 1"])]
    task = {"task": "top5", "status": "pass", "advice": None}
    _fail_on_graded_check(task, cell, 9)
    assert task["status"] == "fail" and task["advice"].startswith("its graded check (In [9]) failed: AssertionError")
    failed = {"task": "top5", "status": "fail", "advice": "your cell calls the model's own forward"}
    _fail_on_graded_check(failed, cell, 9)
    assert failed["advice"] == "your cell calls the model's own forward", "the task's own advice comes first"
