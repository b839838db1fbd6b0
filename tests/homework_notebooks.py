"""Small homework notebooks for the tests: the five course tasks on the tiny untrained ViT.

``solution_notebook()`` is laid out like a walk-through notebook with nbgrader markers
(title, imports, given cells, task cells each followed by its graded check cell with
hidden tests, "explain this result" answers);
``solution_notebook(MISTAKES)`` puts the course's classic mistakes in place of three
solutions. Tests write these to files and run the converter and the checker on them.
"""
from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

TINY = "vit_tiny_patch16_224"

IMPORTS = """\
import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.transforms.functional import to_tensor

from vit_inspect import (check_answer, grid_size_of, load_image, load_vit, patch_size_of, patchify,
                         pos_embed_similarity, preprocess, run_blocks_one_at_a_time, sample_images,
                         tokens_with_position, top_k)"""

SETUP = f"""\
torch.set_grad_enabled(False)
model, provenance = load_vit("{TINY}", weights="random")
print(provenance.label)
image_path = next(p for p in sample_images() if p.name == "chelsea.png")
x = preprocess(image_path, model).tensor  # (B, C, H, W)
P = patch_size_of(model)
gh, gw = grid_size_of(model)"""

# task -> (code before the solution, the solution, code after it: the asserts the student's tensors must pass)
TASK_CODE = {
    "patch_split": (
        "B, C, H, W = x.shape",
        """\
grid = x.reshape(B, C, gh, P, gw, P)  # (B, C, gh, P, gw, P)
patches = grid.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * P * P)  # (B, N, C*P*P)""",
        'assert patches.shape == (B, gh * gw, C * P * P), "one row of C*P*P values per patch"'),
    "qkv_split": (
        """\
block = model.blocks[0]
attn = block.attn
B, N, D = z0.shape
H, d = attn.num_heads, attn.head_dim""",
        """\
qkv = attn.qkv(block.norm1(z0))  # (B, N, 3*D)
qkv_heads = qkv.reshape(B, N, 3, H, d)  # (B, N, 3, H, d)
q, k, v = qkv_heads.permute(2, 0, 3, 1, 4)  # each (B, H, N, d)""",
        """\
assert qkv_heads.shape == (B, N, 3, H, d), "three heads' worth of q, k, v per token"
assert q.shape == k.shape == v.shape == (B, H, N, d), "one (N, d) matrix per head\""""),
    "attention": (
        "",
        """\
scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, N, N)
A = scores.softmax(dim=-1)  # (B, H, N, N)""",
        'assert_close(A.sum(dim=-1), torch.ones(B, H, N), msg="each row of A is a distribution over the keys")'),
    "pos_similarity": (
        "",
        """\
unit = F.normalize(model.pos_embed[0, 1:], dim=-1)  # (gh*gw, D)
similarity = (unit @ unit.T).reshape(gh, gw, gh, gw)  # (gh, gw, gh, gw)""",
        'assert similarity.shape == (gh, gw, gh, gw), "one (gh, gw) tile per patch"'),
    "top5": (
        "",
        """\
y = model.norm(stream)[:, 0]  # (B, D)
logits = y @ model.head.weight.T + model.head.bias  # (B, C)
probs = logits.softmax(dim=-1)  # (B, C)
top5_probs, top5_indices = probs.topk(5, dim=-1)  # (B, 5) each""",
        'assert_close(probs.sum(dim=-1), torch.ones(B), msg="probabilities sum to 1")'),
}

# task -> its hidden tests: what the walk-through compares with, which would give the answer away
HIDDEN_TESTS = {
    "patch_split": 'assert_close(patches, patchify(x, P), rtol=0, atol=0, msg="the package cuts the same patches")',
    "qkv_split": 'assert_close(q, attn.qkv(block.norm1(z0)).reshape(B, N, 3, H, d)[:, :, 0].transpose(1, 2), '
                 'msg="q is the first third")',
    "attention": 'assert_close(A, (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1), msg="softmax(qk/sqrt(d))")',
    "pos_similarity": 'assert_close(similarity, pos_embed_similarity(model), msg="the package gives the same tiles")',
    "top5": 'assert_close(logits, model(x), rtol=1e-4, atol=1e-4, msg="the head by hand equals model(x)")',
}

MISTAKES = {
    # the grid cut from the photo as it is, not from the 224x224 input the model receives
    "patch_split": """\
photo = to_tensor(load_image(image_path))  # (C, H0, W0)
C, H0, W0 = photo.shape
photo = photo[:, :H0 // P * P, :W0 // P * P].reshape(1, C, H0 // P, P, W0 // P, P)  # (B, C, gh0, P, gw0, P)
patches = photo.permute(0, 2, 4, 1, 3, 5).reshape(1, -1, C * P * P)  # (B, N0, C*P*P)""",
    # qkv applied to z0, skipping norm1
    "qkv_split": """\
qkv = attn.qkv(z0)  # (B, N, 3*D)
qkv_heads = qkv.reshape(B, N, 3, H, d)  # (B, N, 3, H, d)
q, k, v = qkv_heads.permute(2, 0, 3, 1, 4)  # each (B, H, N, d)""",
    # no 1/sqrt(d)
    "attention": """\
scores = q @ k.transpose(-2, -1)  # (B, H, N, N)
A = scores.softmax(dim=-1)  # (B, H, N, N)""",
    # right, but under another name: the `similarity` an earlier cell left must not count
    "pos_similarity": """\
unit = F.normalize(model.pos_embed[0, 1:], dim=-1)  # (gh*gw, D)
sim = (unit @ unit.T).reshape(gh, gw, gh, gw)  # (gh, gw, gh, gw)""",
}

ANSWERS = {
    "patch_split": "Each of the 196 rows is one 16x16 patch of the crop, its 768 numbers channel first.",
    "attention": "Each row of A sums to 1: the softmax turns a query's scores into weights over the keys.",
}


def task_cell(task: str, solution: str) -> nbformat.NotebookNode:
    before, _, after = TASK_CODE[task]
    source = "\n".join(part for part in (before, "### BEGIN SOLUTION", solution, "### END SOLUTION", after) if part)
    metadata = {"vit_inspect": {"task": task},
                "nbgrader": {"grade": False, "grade_id": task, "locked": False, "schema_version": 3,
                             "solution": True, "task": False}}
    return new_code_cell(source, metadata=metadata)


def check_cell(task: str, points: int = 1) -> nbformat.NotebookNode:
    """The graded cell after a task: the self-check, then nbgrader's hidden tests."""
    source = f'check_answer("{task}")\n### BEGIN HIDDEN TESTS\n{HIDDEN_TESTS[task]}\n### END HIDDEN TESTS'
    metadata = {"vit_inspect": {"check": task},
                "nbgrader": {"grade": True, "grade_id": f"{task}_check", "locked": True, "points": points,
                             "schema_version": 3, "solution": False, "task": False}}
    return new_code_cell(source, metadata=metadata)


def answer_cell(task: str) -> nbformat.NotebookNode:
    metadata = {"nbgrader": {"grade": True, "grade_id": f"{task}_answer", "locked": False, "points": 1,
                             "schema_version": 3, "solution": True, "task": False}}
    return new_markdown_cell(ANSWERS[task], metadata=metadata)


def solution_notebook(replace: dict[str, str] | None = None, extra_cells: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    """The five tasks, solved; ``replace`` swaps in other solutions (e.g. :data:`MISTAKES`)."""
    solutions = {task: code for task, (_, code, _) in TASK_CODE.items()} | (replace or {})
    cells = [new_markdown_cell("# Homework fixture\n\nThe course's five tasks on a tiny untrained ViT.\n\n"
                               "Prerequisite: none."),
             new_code_cell(IMPORTS), new_code_cell(SETUP),
             task_cell("patch_split", solutions["patch_split"]), check_cell("patch_split"),
             answer_cell("patch_split"),
             new_code_cell("z0 = tokens_with_position(model, model.patch_embed(x))  # (B, N, D)"),
             task_cell("qkv_split", solutions["qkv_split"]), check_cell("qkv_split"),
             new_markdown_cell("**Explain:** why do the rows of A sum to 1?"),
             task_cell("attention", solutions["attention"]), check_cell("attention"), answer_cell("attention"),
             new_code_cell("similarity = pos_embed_similarity(model)  # (gh, gw, gh, gw), what the package gives"),
             task_cell("pos_similarity", solutions["pos_similarity"]), check_cell("pos_similarity"),
             new_code_cell('stream = run_blocks_one_at_a_time(model, x)["stream"][-1]  # (B, N, D)'),
             task_cell("top5", solutions["top5"]), check_cell("top5"),
             new_code_cell("print(top_k(logits).names[0])"),
             *[new_code_cell(code) for code in extra_cells]]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return notebook
