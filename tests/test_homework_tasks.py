"""The self-check's kernel side: right answers pass, each classic mistake is named, nothing raises.

Students' tensors are computed here by hand, independently of the references in
homework_tasks.py, so a wrong reference fails these tests.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import to_tensor

from vit_inspect import capture, create_untrained, load_image, preprocess, sample_images, tokens_with_position
from vit_inspect import homework_tasks
from vit_inspect.homework_tasks import (TASKS, _same_ranking, check_task, forget_outputs, helpers_called,
                                        same, same_up_to_channel_affine)

from .mutation import fails, passes

P = 16


def givens(model) -> dict:
    """What a notebook's given cells define, and every student answer below is built from."""
    with torch.no_grad():
        image_path = next(p for p in sample_images() if p.name == "chelsea.png")
        x = preprocess(image_path, model).tensor.to(model.pos_embed.dtype)  # (B, C, H, W)
        block = model.blocks[0]
        z0 = tokens_with_position(model, model.patch_embed(x))  # (B, N, D)
        stream = model.blocks(z0)  # (B, N, D)
        attention = capture(model, x)["attention"]  # (B, L, H, N, N), what notebook 06 captures
    return {"model": model, "image_path": image_path, "x": x, "block": block, "z0": z0, "stream": stream,
            "attention": attention}


@pytest.fixture(scope="module")
def given(tiny):
    return givens(tiny)


def cut(images: torch.Tensor, order: str = "c s1 s2") -> torch.Tensor:
    B, C, H, W = images.shape
    grid = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, gh, P, gw, P)
    permuted = grid.permute(0, 2, 4, 1, 3, 5) if order == "c s1 s2" else grid.permute(0, 2, 4, 3, 5, 1)
    return permuted.reshape(B, (H // P) * (W // P), C * P * P)  # (B, N, C*P*P)


def qkv_split(g, normed: bool = True, three_first: bool = True) -> dict:
    attn = g["block"].attn
    B, N, D = g["z0"].shape
    H, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(g["block"].norm1(g["z0"]) if normed else g["z0"])  # (B, N, 3*D)
    if three_first:
        heads = qkv.reshape(B, N, 3, H, d)  # (B, N, 3, H, d)
        q, k, v = heads.permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
    else:
        heads = qkv.reshape(B, N, H, 3, d)  # (B, N, H, 3, d)
        q, k, v = heads.permute(3, 0, 2, 1, 4)  # each (B, H, N, d)
    return {"qkv_heads": heads, "q": q, "k": k, "v": v}


def attention(g, scale: float | None = None, softmax_dim: int = -1, normed: bool = True) -> dict:
    s = qkv_split(g, normed)
    d = s["q"].shape[-1]
    scores = s["q"] @ s["k"].transpose(-2, -1) * (d ** -0.5 if scale is None else scale)  # (B, H, N, N)
    return {"scores": scores, "A": scores.softmax(dim=softmax_dim)}  # (B, H, N, N)


def similarity(g, with_class: bool = False, normalise_dim: int | None = -1) -> dict:
    embeddings = g["model"].pos_embed[0] if with_class else g["model"].pos_embed[0, 1:]  # (N, D)
    unit = embeddings if normalise_dim is None else F.normalize(embeddings, dim=normalise_dim)
    sims = unit @ unit.T  # (N, N)
    return {"similarity": sims if with_class else sims.reshape(14, 14, 14, 14)}  # (gh, gw, gh, gw)


def head(g, pooled: torch.Tensor | None = None, softmax: bool = True) -> dict:
    model = g["model"]
    y = model.norm(g["stream"])[:, 0] if pooled is None else pooled  # (B, D)
    logits = y @ model.head.weight.T + model.head.bias  # (B, C)
    probs = logits.softmax(dim=-1)  # (B, C)
    top = probs.topk(5, dim=-1)
    return {"logits": logits, "probs": probs, "top5_indices": top.indices,
            "top5_probs": top.values if softmax else logits.topk(5, dim=-1).values}


def width(g) -> int:
    """D, the model width: 192 for ViT-Ti, 768 for ViT-B."""
    return g["z0"].shape[-1]


def photo(g, squash: bool = False) -> torch.Tensor:
    image = load_image(g["image_path"])
    pixels = to_tensor(image.resize((224, 224)) if squash else image)  # (C, H, W)
    if not squash:
        pixels = pixels[:, :pixels.shape[1] // P * P, :pixels.shape[2] // P * P]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)  # (B, C, H, W), ImageNet constants copied by hand


def layer_norm(g, unbiased: bool = False, eps: float | None = None, affine: bool = True, dim: int = -1,
               norm: str = "norm1") -> dict:
    z, module = g["z0"], getattr(g["block"], norm)
    centred = z - z.mean(dim=dim, keepdim=True)  # (B, N, D)
    var = (centred ** 2).sum(dim=dim, keepdim=True) / (z.shape[dim] - 1 if unbiased else z.shape[dim])
    out = centred / (var + (module.eps if eps is None else eps)).sqrt()  # (B, N, D)
    return {"normed": out * module.weight + module.bias if affine else out}


def mlp(g, act=F.gelu, act_after_fc2: bool = False) -> dict:
    block = g["block"]
    x = block.norm2(g["z0"])  # (B, N, D)
    hidden = act(x @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)  # (B, N, 4D)
    out = hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias  # (B, N, D)
    return {"hidden": hidden, "mlp_out": act(out) if act_after_fc2 else out}


def rollout(g, identity: bool = True, renormalise: bool = True, later_on_left: bool = True) -> dict:
    attention = g["attention"]
    B, L, H, N, _ = attention.shape
    result = torch.eye(N).expand(B, N, N)  # (B, N, N)
    for layer in range(L):
        a = attention[:, layer].sum(dim=1) / H + (torch.eye(N) if identity else 0)  # (B, N, N)
        a = a / a.sum(dim=-1, keepdim=True) if renormalise else a
        result = a @ result if later_on_left else result @ a  # (B, N, N)
    return {"rollout": result}


def distances(g, renormalise: bool = True, scale: float = 1.0, reduce_keys: str = "sum") -> dict:
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")  # (gh, gw)
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1) * P + P / 2  # (gh*gw, 2) pixels
    gap = ((centres[:, None] - centres[None]) ** 2).sum(dim=-1).sqrt()  # (gh*gw, gh*gw)
    w = g["attention"][..., 1:, 1:]  # (B, L, H, gh*gw, gh*gw), patch queries over patch keys
    w = w / w.sum(dim=-1, keepdim=True) if renormalise else w
    weighted = w * gap * scale  # (B, L, H, gh*gw, gh*gw)
    per_query = weighted.sum(dim=-1) if reduce_keys == "sum" else weighted.mean(dim=-1)  # (B, L, H, gh*gw)
    return {"distances": per_query.mean(dim=-1)}  # (B, L, H)


def count(g, leave_out: tuple[str, ...] = ()) -> dict:
    """ViT-Ti/16's parameters from its configuration alone: D = 192, L = 12, MLP 768, P = 16, 1000 classes."""
    D, L, M, P_, C, N = 192, 12, 768, 16, 1000, 197
    norm, bias = {"norms": 0 if "norms" in leave_out else 2 * D}, "biases" in leave_out
    ln = norm["norms"] - (D if bias and norm["norms"] else 0)  # beta is a bias too
    linear = lambda i, o: i * o + (0 if bias else o)  # noqa: E731
    parts = {"patch": linear(3 * P_ * P_, D), "cls": D, "pos": N * D, "head": linear(D, C), "final_norm": ln,
             "blocks": L * (2 * ln + linear(D, 3 * D) + linear(D, D) + linear(D, M) + linear(M, D))}
    total = sum(value for key, value in parts.items() if key not in leave_out)
    return {"num_params": total - (D if "row" in leave_out else 0)}


def weight_split(g, order=(0, 1, 2), transpose: bool = False) -> dict:
    W = g["block"].attn.qkv.weight  # (3D, D)
    D = W.shape[1]
    blocks = [W[:D], W[D:2 * D], W[2 * D:]]
    return {name: blocks[i].T if transpose else blocks[i] for name, i in zip(("W_q", "W_k", "W_v"), order)}


def heads_then_three_rows(g) -> dict:
    W = g["block"].attn.qkv.weight  # (3D, D)
    D, H = W.shape[1], g["block"].attn.num_heads
    d = D // H
    rows = {name: torch.cat([W[h * 3 * d + i * d: h * 3 * d + (i + 1) * d] for h in range(H)])  # (D, D)
            for i, name in enumerate(("W_q", "W_k", "W_v"))}
    return rows


RIGHT = {
    "patch_split": lambda g: {"patches": cut(g["x"])},
    "qkv_split": qkv_split,
    "attention": attention,
    "pos_similarity": similarity,
    "top5": head,
    "layer_norm": layer_norm,
    "mlp": mlp,
    "rollout": rollout,
    "attention_distance": distances,
    "param_count": count,
    "qkv_weight_split": weight_split,
}

MISTAKEN = {  # (task, mistake) -> the student's variables, computed the mistaken way
    ("patch_split", "channels_last"): lambda g: {"patches": cut(g["x"], "s1 s2 c")},
    ("patch_split", "column_major"): lambda g: {"patches": cut(g["x"].transpose(-2, -1)).reshape(1, 14, 14, 3, P, P)
                                                .transpose(-2, -1).reshape(1, 196, -1)},
    ("patch_split", "other_normalisation"): lambda g: {"patches": cut(g["x"] * 0.5 + 0.5)},
    ("patch_split", "squashed_image"): lambda g: {"patches": cut(photo(g, squash=True))},
    ("patch_split", "original_image"): lambda g: {"patches": cut(photo(g))},
    ("qkv_split", "skip_norm1"): lambda g: qkv_split(g, normed=False),
    ("qkv_split", "heads_then_three"): lambda g: qkv_split(g, three_first=False),
    ("qkv_split", "q_k_swapped"): lambda g: (lambda s: {**s, "q": s["k"], "k": s["q"]})(qkv_split(g)),
    ("qkv_split", "no_permute"): lambda g: (lambda s: {**s, **dict(zip("qkv", s["qkv_heads"].unbind(2)))})(qkv_split(g)),
    ("attention", "divide_after_softmax"): lambda g: (lambda a: {**a, "A": a["A"] / math.sqrt(width(g))})(attention(g, 1.0)),
    ("attention", "no_scale"): lambda g: attention(g, scale=1.0),
    ("attention", "scale_by_sqrt_D"): lambda g: attention(g, scale=width(g) ** -0.5),
    ("attention", "no_softmax"): lambda g: (lambda a: {**a, "A": a["scores"]})(attention(g)),
    ("attention", "softmax_over_queries"): lambda g: attention(g, softmax_dim=-2),
    ("attention", "skip_norm1"): lambda g: attention(g, normed=False),
    ("pos_similarity", "with_class_token"): lambda g: similarity(g, with_class=True),
    ("pos_similarity", "dot_product"): lambda g: similarity(g, normalise_dim=None),
    ("pos_similarity", "normalised_over_positions"): lambda g: similarity(g, normalise_dim=0),
    ("top5", "mean_pooling"): lambda g: head(g, g["model"].norm(g["stream"])[:, 1:].mean(dim=1)),
    ("top5", "mean_pooling_all"): lambda g: head(g, g["model"].norm(g["stream"]).mean(dim=1)),
    ("top5", "no_final_norm"): lambda g: head(g, g["stream"][:, 0]),
    ("top5", "first_patch"): lambda g: head(g, g["model"].norm(g["stream"])[:, 1]),
    ("top5", "probs_are_logits"): lambda g: head(g, softmax=False),
    ("layer_norm", "unbiased_variance"): lambda g: layer_norm(g, unbiased=True),
    ("layer_norm", "default_eps"): lambda g: layer_norm(g, eps=1e-5),
    ("layer_norm", "no_gamma_beta"): lambda g: layer_norm(g, affine=False),
    ("layer_norm", "over_tokens"): lambda g: layer_norm(g, dim=-2),
    ("layer_norm", "norm2_parameters"): lambda g: (lambda n: {"normed": layer_norm(g, affine=False)["normed"]
                                                   * n.weight + n.bias})(g["block"].norm2),
    ("mlp", "other_gelu"): lambda g: mlp(g, lambda t: F.gelu(t, approximate="tanh")),
    ("mlp", "relu"): lambda g: mlp(g, torch.relu),
    ("mlp", "no_activation"): lambda g: mlp(g, lambda t: t),
    ("mlp", "activation_after_fc2"): lambda g: mlp(g, act_after_fc2=True),
    ("rollout", "no_identity"): lambda g: rollout(g, identity=False),
    ("rollout", "not_renormalised"): lambda g: rollout(g, renormalise=False),
    ("rollout", "earlier_layers_on_the_left"): lambda g: rollout(g, later_on_left=False),
    ("attention_distance", "not_renormalised"): lambda g: distances(g, renormalise=False),
    ("attention_distance", "in_patches"): lambda g: distances(g, scale=1 / P),
    ("attention_distance", "mean_over_keys"): lambda g: distances(g, reduce_keys="mean"),
    ("param_count", "no_head"): lambda g: count(g, ("head",)),
    ("param_count", "no_tokens"): lambda g: count(g, ("cls", "pos")),
    ("param_count", "no_biases"): lambda g: count(g, ("biases",)),
    ("param_count", "no_layer_norms"): lambda g: count(g, ("norms",)),
    ("param_count", "class_token_row"): lambda g: count(g, ("row",)),
    ("qkv_weight_split", "q_k_swapped"): lambda g: weight_split(g, (1, 0, 2)),
    ("qkv_weight_split", "transposed"): lambda g: weight_split(g, transpose=True),
    ("qkv_weight_split", "heads_then_three"): heads_then_three_rows,
    ("qkv_weight_split", "split_columns"): lambda g: dict(zip(("W_q", "W_k", "W_v"),
                                                              g["block"].attn.qkv.weight.chunk(3, dim=1))),
}


def run(task: str, g: dict, answers: dict, source: str = "") -> tuple[dict, dict]:
    with torch.no_grad():
        namespace = {"model": g["model"], "image_path": g["image_path"], "attention": g["attention"], **answers}
        return check_task(task, namespace, source, substitute=True), namespace


@pytest.mark.parametrize("task", TASKS)
def test_right_answers_pass(given, task):
    with torch.no_grad():
        answers = RIGHT[task](given)
    result, _ = run(task, given, answers)
    assert result["status"] == "pass", result
    assert [c["status"] for c in result["checks"]] == ["match"] * len(TASKS[task].outputs)
    assert result["advice"] is None and result["substituted"] == []


@pytest.mark.parametrize("task", ["qkv_split", "attention"])
def test_right_answers_pass_when_the_heads_are_not_three(task):
    """With 3 heads, (B, N, 3, H, d) and (B, N, H, 3, d) are the same reshape: ViT-Ti/16 cannot tell them apart."""
    four_heads = givens(create_untrained("vit_tiny_patch16_224", seed=0, num_heads=4, depth=2))
    with torch.no_grad():
        answers = RIGHT[task](four_heads)
    assert answers["A" if task == "attention" else "q"].shape[1] == 4
    assert run(task, four_heads, answers)[0]["status"] == "pass"
    if task == "qkv_split":
        with torch.no_grad():
            wrong = MISTAKEN["qkv_split", "heads_then_three"](four_heads)
        assert run(task, four_heads, wrong)[0]["mistake"] == "heads_then_three"


def test_answers_without_the_batch_of_one_pass(given):
    with torch.no_grad():
        answers = {name: value[0] for name, value in qkv_split(given).items()}  # (197, 3, H, 64), (H, 197, 64)
    assert run("qkv_split", given, answers)[0]["status"] == "pass"
    flat = similarity(given)["similarity"].reshape(196, 196)  # (gh*gw, gh*gw)
    assert run("pos_similarity", given, {"similarity": flat})[0]["status"] == "pass"


def test_every_mistake_has_a_test():
    assert set(MISTAKEN) == {(task.name, m.name) for task in TASKS.values() for m in task.mistakes}


@pytest.mark.parametrize("task, mistake", MISTAKEN, ids=lambda v: v if isinstance(v, str) else None)
def test_each_classic_mistake_fails_and_is_named(given, task, mistake):
    with torch.no_grad():
        answers = MISTAKEN[task, mistake](given)
    result, _ = run(task, given, answers)
    assert result["status"] == "fail"
    assert result["mistake"] == mistake, result["advice"]
    advice = next(m.advice for m in TASKS[task].mistakes if m.name == mistake)
    assert result["advice"] == advice and "\n" not in advice


def test_the_three_course_mistakes_are_worded_as_the_course_knows_them(given):
    words = {("patch_split", "original_image"): "un-resized", ("qkv_split", "skip_norm1"): "LayerNorm",
             ("attention", "no_scale"): "1/sqrt(d)"}
    for (task, mistake), word in words.items():
        with torch.no_grad():
            result, _ = run(task, given, MISTAKEN[task, mistake](given))
        assert word in result["advice"]


def test_a_failed_task_leaves_the_reference_in_place_of_the_wrong_variables(given):
    with torch.no_grad():
        answers = MISTAKEN["qkv_split", "q_k_swapped"](given)
        right = qkv_split(given)
    result, namespace = run("qkv_split", given, answers)
    assert result["substituted"] == ["q", "k"]
    assert namespace["v"] is answers["v"], "a right variable is the student's own"
    for name in ("q", "k"):
        assert torch.allclose(namespace[name], right[name], atol=1e-5)


def test_missing_wrong_type_and_wrong_shape_say_what_is_expected(given):
    result, namespace = run("patch_split", given, {})
    assert result["checks"][0]["status"] == "missing"
    assert "`patches` (B, N, C*P*P) = (1, 196, 768)" in result["advice"]
    assert namespace["patches"].shape == (1, 196, 768), "the reference takes its place"
    result, _ = run("patch_split", given, {"patches": "a string"})
    assert result["checks"][0]["status"] == "not_tensor" and "is a str" in result["advice"]
    result, _ = run("patch_split", given, {"patches": cut(given["x"]).transpose(1, 2)})
    assert result["checks"][0]["status"] == "shape" and "not (1, 768, 196)" in result["advice"]
    result, _ = run("patch_split", given, {"patches": cut(given["x"]).roll(1, dims=1)})  # off by one patch
    assert result["checks"][0]["status"] == "values" and "other values" in result["advice"]


def test_calling_the_packages_helper_is_not_doing_it_by_hand(given):
    source = "patches = patchify(x, P)  # (B, N, C*P*P)\nassert_close(patches, patchify_einops(x, P))"
    assert helpers_called(TASKS["patch_split"], source) == ["patchify"]
    result, _ = run("patch_split", given, {"patches": cut(given["x"])}, source)
    assert result["status"] == "fail" and "by hand" in result["advice"] and "patchify" in result["advice"]
    assert helpers_called(TASKS["patch_split"], "%time x = 1\nassert_close(cut(x), patchify(x, P))") == []


def test_problems_of_the_checker_come_back_as_failures_not_exceptions(given):
    result = check_task("patch_split", {"model": given["model"], "patches": cut(given["x"])})
    assert result["status"] == "fail" and "no `image_path`" in result["advice"]
    result = check_task("no_such_task", {})
    assert result["status"] == "fail" and "patch_split" in result["advice"]
    result = check_task("qkv_split", {"model": torch.nn.Linear(2, 2), "image_path": given["image_path"]})
    assert result["status"] == "fail" and result["advice"].startswith("the checker could not compute the reference")


def test_forget_outputs_drops_only_the_tasks_variables():
    namespace = {"q": 1, "k": 2, "v": 3, "qkv_heads": 4, "model": 5, "q_8": 6}
    forget_outputs("qkv_split", namespace)
    assert namespace == {"model": 5, "q_8": 6}
    forget_outputs("no_such_task", namespace)
    forget_outputs("qkv_split", namespace, {"names": {"q": "q_8"}})
    assert namespace == {"model": 5}


def test_an_exercise_renames_variables_and_sets_the_patch_size(given):
    """{"task": "patch_split", "patch_size": 32, "names": {...}}: the same check on other names and numbers."""
    params = {"patch_size": 32, "names": {"patches": "patches_32", "model": "vit", "image_path": "photo"}}
    namespace = {"vit": given["model"], "photo": given["image_path"], "patches": cut(given["x"])}
    with torch.no_grad():
        namespace["patches_32"] = given["x"].reshape(1, 3, 7, 32, 7, 32).permute(0, 2, 4, 1, 3, 5).reshape(1, 49, -1)
        result = check_task("patch_split", namespace, params=params)
    assert result["status"] == "pass" and result["checks"][0]["name"] == "patches_32"
    assert result["title"] == "patch split (patch_size 32)", "the exercise's row is told from the walk-through's"
    namespace["patches_32"] = namespace["patches"]  # the 16-pixel patches where 32 were asked for
    with torch.no_grad():
        result = check_task("patch_split", namespace, params=params, substitute=True)
    assert result["status"] == "fail" and "`patches_32` should be (B, N, C*P*P) = (1, 49, 3072)" in result["advice"]
    assert result["substituted"] == ["patches_32"] and namespace["patches_32"].shape == (1, 49, 3072)
    assert namespace["patches"].shape == (1, 196, 768), "the walk-through's own variable is left alone"


def test_a_block_parameter_checks_another_block(given):
    with torch.no_grad():
        stream = given["model"].blocks[:5](given["z0"])  # (B, N, D), the input of block 5
        deeper = qkv_split({**given, "block": given["model"].blocks[5], "z0": stream})
        result = check_task("qkv_split", {"model": given["model"], "image_path": given["image_path"], **deeper},
                            params={"block": 5})
        assert result["status"] == "pass" and result["title"] == "qkv reshape and split (block 5)"
        assert check_task("qkv_split", {"model": given["model"], "image_path": given["image_path"],
                                        **qkv_split(given)}, params={"block": 5})["status"] == "fail"


def test_top5_classes_that_tie_may_come_in_either_order():
    probs = torch.tensor([[0.1, 0.3, 0.2, 0.2, 0.05, 0.15]])  # classes 2 and 3 tie
    reference = {"probs": probs, "top5_probs": probs.topk(5).values}
    expected = probs.topk(5).indices
    swapped = expected.clone()
    swapped[0, [1, 2]] = expected[0, [2, 1]]
    assert _same_ranking(swapped, expected, reference)
    assert not _same_ranking(torch.tensor([[1, 2, 3, 4, 0]]), expected, reference), "class 4 is not in the top 5"
    assert not _same_ranking(probs.topk(5).values, expected, reference), "probabilities are not classes"


def test_comparisons():
    a = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(0))
    assert same(a, a) and same(a[0], a) and not same(a[0, :2], a)
    assert not same(a * (1 + 1e-3), a)
    assert same_up_to_channel_affine(a * 2 + 1, a) and not same_up_to_channel_affine(a.flip(-1), a)


def test_a_float64_model_is_checked_in_float64(tiny):
    """Notebooks 07 and 08 run their model in float64: the reference follows the model's dtype."""
    double = givens(copy.deepcopy(tiny).double())
    with torch.no_grad():
        answers = qkv_split(double)
    assert answers["q"].dtype == torch.float64
    result, _ = run("qkv_split", double, answers)
    assert result["status"] == "pass", result["advice"]


def test_a_number_is_a_number_in_the_advice(given):
    result, _ = run("param_count", given, {})
    assert result["checks"][0]["expected_shape"] == [] and "assign `num_params` (a number)" in result["advice"]
    result, _ = run("param_count", given, {"num_params": 5_717_416.0})  # right, as a float
    assert result["status"] == "pass"


def test_a_renamed_exercise_is_titled_by_its_variables(given):
    with torch.no_grad():
        answers = {"similarity_2": similarity(given)["similarity"]}
    result = check_task("pos_similarity", {"model": given["model"], **answers},
                        params={"names": {"similarity": "similarity_2"}})
    assert result["status"] == "pass" and result["title"] == "position-embedding similarity (similarity_2)"
    assert check_task("pos_similarity", {"model": given["model"], "similarity": answers["similarity_2"]})["title"] \
        == "position-embedding similarity", "the walk-through's own row has no suffix"


# ---------------------------------------------------------------- answers that are not the student's own work

def _cheat_names(g) -> dict:
    """What a student's notebook may hold beside the givens: the package's helpers under other names, modules."""
    from vit_inspect import attention_rollout, mean_attention_distance, patchify, pos_embed_similarity
    from vit_inspect.attention_by_hand import self_attention_by_hand
    from vit_inspect.huggingface import split_qkv
    block = g["block"]
    return {"cut": patchify, "steps_of": self_attention_by_hand, "grab": capture, "sim": pos_embed_similarity,
            "roll": attention_rollout, "mad": mean_attention_distance, "split": split_qkv, "norm": block.norm1,
            "mlp": block.mlp, "normed2": block.norm2(g["z0"]), "qkv_weight": block.attn.qkv.weight, "F": F,
            "x": g["x"], "z0": g["z0"], "block": block, "stream": g["stream"], "P": P}


# task -> the cell's source computing the answer with the model's own forward, its module or the package's helper
FORWARD_CHEATS = {
    "patch_split": "patches = cut(x, P)  # (B, N, C*P*P)",
    "qkv_split": "s = steps_of(block, z0)\nq, k, v = s['q'], s['k'], s['v']\n"
                 "qkv_heads = s['qkv'].reshape(1, 197, 3, 3, 64)",
    "attention": "scores = q @ k.transpose(-2, -1) / 8\nA = grab(model, x)['attention'][:, 0]",
    "pos_similarity": "similarity = sim(model)",
    "top5": "logits = model(x)\nprobs = logits.softmax(dim=-1)\ntop5_probs, top5_indices = probs.topk(5, dim=-1)",
    "layer_norm": "normed = norm(z0)",
    "mlp": "hidden = F.gelu(normed2 @ mlp.fc1.weight.T + mlp.fc1.bias)\nmlp_out = mlp(normed2)",
    "rollout": "rollout = roll(attention)",
    "attention_distance": "distances = mad(attention, (14, 14), 1, P)",
    "param_count": "num_params = sum(p.numel() for p in model.parameters())",
    "qkv_weight_split": "W_q, W_k, W_v = split(qkv_weight)",
}


@pytest.mark.parametrize("task", TASKS)
def test_an_answer_from_the_models_own_forward_or_the_packages_helper_fails(given, task):
    with torch.no_grad():
        answers = RIGHT[task](given)
        result, _ = run(task, {**given}, {**_cheat_names(given), **answers}, FORWARD_CHEATS[task])
    assert result["status"] == "fail" and result["checks"] and all(c["status"] == "match" for c in result["checks"])
    words = "reads the answer off the model" if task == "param_count" else "computes the answer for you"
    assert words in result["advice"] and result["advice"].startswith("your cell calls"), result["advice"]


@pytest.mark.parametrize("source, what", [
    ("logits = model.forward_head(model.forward_features(x))", "the model's own forward"),
    ("net = model\nlogits = net(x)", "the model's own forward"),
    ("logits = model.head(model.norm(stream)[:, 0])", "the model's own head module"),
])
def test_the_models_forward_is_recognised_under_any_name(given, source, what):
    with torch.no_grad():
        answers = head(given)
        result, _ = run("top5", given, {**_cheat_names(given), "net": given["model"], **answers}, source)
    assert result["status"] == "fail" and what in result["advice"], result["advice"]


@pytest.mark.parametrize("source", ["normed = F.layer_norm(z0, (192,), norm.weight, norm.bias, norm.eps)",
                                    "ln = torch.nn.LayerNorm(192)\nnormed = ln(z0)",
                                    "normed = model.blocks[0].norm1(z0)"])
def test_torchs_or_the_models_layer_norm_is_not_layer_norm_by_hand(given, source):
    with torch.no_grad():
        result, _ = run("layer_norm", given, {**_cheat_names(given), "torch": torch, **layer_norm(given)}, source)
    assert result["status"] == "fail" and "LayerNorm" in result["advice"], result["advice"]


@pytest.mark.parametrize("task", TASKS)
def test_a_copy_of_the_reference_fails(given, task):
    """The answer read from a variable that already held it (what `expected = model(x)` above the blank allowed)."""
    with torch.no_grad():
        answers = RIGHT[task](given)
    first = next(iter(TASKS[task].outputs))
    namespace = {**answers, "expected": answers[first]}
    source = f"{first} = expected * 1"
    result, _ = run(task, given, namespace, source)
    assert result["status"] == "fail", result
    assert "reads `expected`, which already holds the answer" in result["advice"], result["advice"]


def test_the_answer_typed_in_or_read_off_another_model_fails(given):
    with torch.no_grad():
        total = count(given)["num_params"]
        result, _ = run("param_count", given, {"num_params": total}, f"num_params = {total}  # from the heading")
        assert result["status"] == "fail" and "types the answer (5,717,416)" in result["advice"], result["advice"]
        other = torch.nn.Linear(192, 192)  # transformers' q_proj: the same weight, another model
        other.weight.copy_(weight_split(given)["W_q"])
        answers = {**weight_split(given), "hf_q": other}
        result, _ = run("qkv_weight_split", given, answers, "W_q = hf_q.weight\nW_k, W_v = 1, 2")
    assert result["status"] == "fail" and "reads `hf_q.weight`" in result["advice"], result["advice"]


def test_reaching_into_the_self_check_fails(given):
    with torch.no_grad():
        answers = qkv_split(given)
    for source in ("from vit_inspect.homework_tasks import TASKS\nq = TASKS['qkv_split']",
                   "q = __import__('vit_inspect.homework_tasks').homework_tasks.check_task('qkv_split', {})"):
        result, _ = run("qkv_split", given, answers, source)
        assert result["status"] == "fail" and "self-check's own module" in result["advice"], result["advice"]


def test_by_hand_answers_with_their_sources_pass(given):
    """The walk-through's own code reads given tensors and the model's weights: nothing there is a cheat."""
    sources = {"top5": TOP5_BY_HAND, "mlp": "hidden = F.gelu(normed2 @ mlp.fc1.weight.T + mlp.fc1.bias)\n"
               "mlp_out = hidden @ mlp.fc2.weight.T + mlp.fc2.bias", "qkv_weight_split":
               "W_q, W_k, W_v = qkv_weight[:D], qkv_weight[D:2 * D], qkv_weight[2 * D:]",
               "param_count": "num_params = 3 * 16 * 16 * D + D + D + 197 * D"}
    for task, source in sources.items():
        with torch.no_grad():
            result, _ = run(task, given, {**_cheat_names(given), "D": 192, **RIGHT[task](given)}, source)
        assert result["status"] == "pass", (task, result["advice"])


TOP5_BY_HAND = """\
y = model.norm(stream)[:, 0]  # (B, D)
logits = y @ model.head.weight.T + model.head.bias  # (B, C)
probs = logits.softmax(dim=-1)  # (B, C)
top5_probs, top5_indices = probs.topk(5, dim=-1)  # (B, 5) each"""


def test_the_mlp_advice_follows_the_gelu_of_the_module_in_hand(tiny):
    """timm's ViT uses the exact GELU, the original JAX ViT flax's nn.gelu (tanh by default): compare with mlp.act."""
    jax_like = copy.deepcopy(tiny)
    for block in jax_like.blocks:
        block.mlp.act = torch.nn.GELU(approximate="tanh")
    g = givens(jax_like)
    with torch.no_grad():
        tanh_answer = mlp(g, lambda t: F.gelu(t, approximate="tanh"))
        exact_answer = mlp(g)
    assert run("mlp", g, tanh_answer)[0]["status"] == "pass", "the module's own tanh GELU is right for this model"
    result, _ = run("mlp", g, exact_answer)
    assert result["mistake"] == "other_gelu" and "mlp.act.approximate" in result["advice"]
    assert "flax" in result["advice"] and "timm" in result["advice"]


def test_check_answer_raises_with_the_advice_and_reads_the_last_cell_that_assigned(given):
    from vit_inspect.homework_tasks import check_answer
    with torch.no_grad():
        right = head(given)
        namespace = {**_cheat_names(given), "model": given["model"], "image_path": given["image_path"], **right,
                     "In": ["", TOP5_BY_HAND, "print(logits)"]}
        check_answer("top5", namespace)  # passes: the by-hand cell
        namespace["In"].append("logits = model(x)  # redone the easy way")
        with pytest.raises(AssertionError, match="model's own forward"):
            check_answer("top5", namespace)
        namespace["logits"] = torch.zeros(1, 1000)
        with pytest.raises(AssertionError, match="classification head and top-5: "):
            check_answer("top5", namespace)
    assert namespace["logits"].abs().sum() == 0, "the self-check substitutes nothing"


def test_a_name_read_before_the_cell_assigns_it_is_read_from_outside(given):
    with torch.no_grad():
        answers = similarity(given)
        result, _ = run("pos_similarity", given, answers, "similarity = similarity * 1")
    assert result["status"] == "fail" and "reads `similarity`" in result["advice"], result["advice"]
    with torch.no_grad():
        result, _ = run("pos_similarity", given, answers, "unit = F.normalize(model.pos_embed[0, 1:], dim=-1)\n"
                        "similarity = (unit @ unit.T).reshape(14, 14, 14, 14)\nsimilarity = similarity * 1")
    assert result["status"] == "pass", "a name the cell assigned first is the cell's own"


def recognises_three_cheats(given) -> None:
    """The model's forward through a bound method, the package's helper renamed, a variable holding the answer."""
    with torch.no_grad():
        forward, _ = run("top5", given, {**_cheat_names(given), **head(given)},
                         "logits = model.forward_head(model.forward_features(x))")
        renamed, _ = run("patch_split", given, {**_cheat_names(given), **RIGHT["patch_split"](given)},
                         "patches = cut(x, P)")
        copied, _ = run("pos_similarity", given, similarity(given), "similarity = similarity * 1")
    results = (forward, renamed, copied)
    assert [r["status"] for r in results] == ["fail"] * 3, [r["advice"] for r in results]


@pytest.mark.parametrize("name, bug", [
    ("FORWARD_METHODS", ()),                                        # model.forward_head(...) not seen as the model
    ("resolve", lambda node, namespace: homework_tasks._UNRESOLVED),  # names spelled, not resolved: `cut` = patchify
    ("_is_value", lambda value: False),                             # values read from outside never compared
], ids=["bound_forward", "no_resolution", "no_copy_check"])
def test_mutation_in_the_cheat_checks_is_caught(given, monkeypatch, name, bug):
    passes(recognises_three_cheats, given)
    monkeypatch.setattr(homework_tasks, name, bug)
    fails(recognises_three_cheats, given)
