"""Notebook 12_explanations: every method of ``explain`` against an independent computation.

The model under test is a timm ViT with a non-square 3 x 5 grid, a class token and two
registers, no constant parameter, and weights scaled so its logits depend clearly on
the input: a transposed map, a dropped prefix token or a sign error changes numbers.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vit_inspect import explanations as ex
from vit_inspect.errors import VitInspectError
from vit_inspect.images import data_config_of
from vit_inspect.weights import randomise_constant_init

from .mutation import fails, passes

GRID = (3, 5)
PATCH = 8
PREFIX = 3  # class token + 2 registers


def build_model(reg_tokens: int = 2, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(img_size=(GRID[0] * PATCH, GRID[1] * PATCH), patch_size=PATCH, embed_dim=32,
                                  depth=3, num_heads=4, reg_tokens=reg_tokens, num_classes=5)
        randomise_constant_init(model)
        with torch.no_grad():  # timm's small init leaves the logits almost constant over inputs
            model.head.weight.normal_(0, 1.0)
            model.patch_embed.proj.weight.mul_(4)
            for block in model.blocks:
                block.attn.qkv.weight.mul_(3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, GRID[0] * PATCH, GRID[1] * PATCH, generator=torch.Generator().manual_seed(1))


def non_predicted(model, images) -> torch.Tensor:
    """For each image the class with the second-largest logit: (B,)."""
    with torch.no_grad():
        return model(images).topk(2, dim=-1).indices[:, 1]


# ---------------------------------------------------------------- independent computations


def manual_forward(model, images):
    """Logits and every block's attention (B, H, N, N), written out from timm's equations."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))  # (B, N, D)
    attentions = []
    for block in model.blocks:
        B, N, D = x.shape
        attn = block.attn
        H = attn.num_heads
        qkv = attn.qkv(block.norm1(x)).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        attentions.append(weights)
        mixed = (weights @ v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        x = x + block.ls1(attn.proj(mixed))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x)), attentions


def chefer_direct(model, images, targets):
    """Chefer et al.'s rule as written: R = I; per block R += mean_h[(dy/dA * A)^+] R; class row over patches."""
    model = copy.deepcopy(model)
    logits, attentions = manual_forward(model, images)
    score = sum(logits[b, int(t)] for b, t in enumerate(targets))
    gradients = torch.autograd.grad(score, attentions)
    B, H, N, _ = attentions[0].shape
    maps = []
    for b in range(B):
        relevance = torch.eye(N)
        for A, G in zip(attentions, gradients):
            heads = [torch.clamp(G[b, h] * A[b, h], min=0) for h in range(H)]
            relevance = relevance + (sum(heads) / H) @ relevance
        maps.append(relevance[0, PREFIX:].reshape(GRID))
    return torch.stack(maps).detach()


def gradcam_by_hand(model, images, targets):
    """Grad-CAM from its definition: ReLU(sum_D mean_tokens(dy/da) a) on the patch tokens, scaled to [0, 1]."""
    model = copy.deepcopy(model)
    kept = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: kept.append(o))
    logits = model(images)
    handle.remove()
    activations = kept[0][:, PREFIX:]  # (B, P, D)
    gradient = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), kept[0])[0][:, PREFIX:]  # (B, P, D)
    cam = (gradient.mean(dim=1, keepdim=True) * activations).sum(dim=-1).clamp_min(0)  # (B, P)
    cam = cam - cam.min(dim=1, keepdim=True).values
    cam = cam / (1e-7 + cam.max(dim=1, keepdim=True).values)
    return cam.reshape(len(targets), *GRID).detach()


def input_x_gradient_by_hand(model, images, targets):
    model = copy.deepcopy(model)
    x = images.clone().requires_grad_(True)
    gradient = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)[0]  # (B, 3, H, W)
    pixels = (x * gradient).detach().sum(dim=1)  # (B, H, W)
    B = len(targets)
    return pixels.reshape(B, GRID[0], PATCH, GRID[1], PATCH).sum(dim=(2, 4))  # (B, gh, gw)


# ---------------------------------------------------------------- checks (run on the code, then on planted bugs)


def check_chefer(model, images):
    for targets in (non_predicted(model, images), ex.class_targets(model, images, None)):
        got = ex.explain(model, images, "chefer", target=targets)
        assert torch.allclose(got, chefer_direct(model, images, targets), rtol=1e-4, atol=1e-7), \
            "chefer differs from the direct implementation of R = R + mean_h[(grad A)^+] R"


def check_gradcam(model, images):
    targets = non_predicted(model, images)
    got = ex.explain(model, images, "gradcam", target=targets)
    assert torch.allclose(got, gradcam_by_hand(model, images, targets), atol=1e-5), "gradcam differs from by-hand"


def check_attention(model, images):
    _, attentions = manual_forward(model, images)
    expected = attentions[-1][:, :, 0, PREFIX:].mean(dim=1).reshape(-1, *GRID)  # (B, gh, gw)
    got = ex.explain(model, images, "attention")
    assert torch.allclose(got, expected.detach(), atol=1e-6), "attention map is not the class row, heads averaged"


def check_completeness(model, images):
    targets = non_predicted(model, images)
    signed = ex.patch_attributions(model, images, "integrated_gradients", targets)  # (B, gh, gw)
    with torch.no_grad():
        gain = (model(images) - model(torch.zeros_like(images))).gather(1, targets[:, None])[:, 0]  # (B,)
    # stated tolerance: 1e-4 + 1% of the gain (32 Gauss-Legendre points; measured error ~1e-6)
    assert torch.allclose(signed.sum(dim=(1, 2)), gain, rtol=1e-2, atol=1e-4), "IG attributions do not sum to f(x) - f(0)"


def check_input_x_gradient(model, images):
    targets = non_predicted(model, images)
    got = ex.patch_attributions(model, images, "input_x_gradient", targets)
    assert torch.allclose(got, input_x_gradient_by_hand(model, images, targets), atol=1e-6), "input x gradient"


def check_leaves_model(model, images):
    model = copy.deepcopy(model).train()
    model.blocks[1].attn.fused_attn = True
    model.blocks[0].attn.fused_attn = False
    model.cls_token.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = ex.model_state(model)
    for method in ex.METHODS:
        ex.explain(model, images, method)
        assert ex.model_state(model) == before, f"{method} left the model changed"


# ---------------------------------------------------------------- tests


def test_chefer_equals_the_update_rule(model, images):
    passes(check_chefer, model, images)


def test_gradcam_equals_by_hand_and_the_library(model, images):
    passes(check_gradcam, model, images)
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    single = build_model(reg_tokens=0)  # the library's own reshape drops exactly one (class) token
    targets = non_predicted(single, images)
    reshape = functools.partial(vit_reshape_transform, height=GRID[0], width=GRID[1])
    library_model = copy.deepcopy(single)
    with GradCAM(library_model, [library_model.blocks[-1].norm1], reshape_transform=reshape) as cam:
        cam.get_target_width_height = lambda _: (GRID[1], GRID[0])
        expected = torch.from_numpy(cam(images, [ClassifierOutputTarget(int(t)) for t in targets]))
    got = ex.explain(single, images, "gradcam", target=targets)
    assert torch.allclose(got, expected, atol=1e-6)


def test_attention_is_the_class_row_heads_averaged(model, images):
    passes(check_attention, model, images)


def test_integrated_gradients_completeness(model, images):
    passes(check_completeness, model, images)


def test_input_x_gradient_equals_by_hand(model, images):
    passes(check_input_x_gradient, model, images)


def test_every_method_leaves_the_model_as_it_was(model, images):
    passes(check_leaves_model, model, images)


def test_every_method_on_the_tiny_vit(tiny):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for method in ex.METHODS:
        maps = ex.explain(tiny, images, method, ig_steps=4)
        assert maps.shape == (2, 14, 14) and bool((maps >= 0).all()), method
        assert maps.flatten(1).std(dim=1).min() > 0, f"{method} gives a constant map"


def test_default_target_is_the_prediction_and_target_matters(model, images):
    predicted = ex.class_targets(model, images, None)
    for method in ex.GRADIENT_METHODS:
        default = ex.explain(model, images, method)
        assert torch.equal(default, ex.explain(model, images, method, target=predicted)), method
        assert not torch.allclose(default, ex.explain(model, images, method, target=non_predicted(model, images))), \
            f"{method} ignores the target"


def test_rollout_is_the_existing_helper(model, images):
    from vit_inspect.attention_maps import attention_rollout

    _, attentions = manual_forward(model, images)
    rollout = attention_rollout(torch.stack(attentions, dim=1).detach())  # (B, N, N)
    expected = rollout[:, 0, PREFIX:].reshape(-1, *GRID)
    assert torch.allclose(ex.explain(model, images, "rollout"), expected, atol=1e-6)


def test_baselines(model):
    config = data_config_of(model)
    mean, std = (torch.tensor(config[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    pixels = torch.zeros(1, 3, GRID[0] * PATCH, GRID[1] * PATCH)
    pixels[..., PATCH:2 * PATCH, 3 * PATCH:4 * PATCH] = 1.0  # one white patch: row 1, column 3
    images = (pixels - mean) / std
    brightness = ex.explain(model, images, "brightness")[0]
    assert torch.allclose(brightness, torch.zeros(GRID).index_put_((torch.tensor(1), torch.tensor(3)),
                                                                   torch.tensor(1.0)), atol=1e-6)
    edges = ex.explain(model, images, "edges")[0]
    assert edges[0, 0] < 1e-6 and edges[2, 0] < 1e-6 and edges[1, 3] > 0.1 and edges[1, 2] > 0.1
    first, again, other = (ex.explain(model, images.expand(2, -1, -1, -1), "random", seed=s) for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first[0], first[1])


def test_bad_method_and_target(model, images):
    with pytest.raises(VitInspectError, match="method must be one of"):
        ex.explain(model, images, "saliency")
    with pytest.raises(VitInspectError, match="one class index per image"):
        ex.explain(model, images, "chefer", target=[0, 1])


# ---------------------------------------------------------------- planted bugs


def _sign_flipped(attention, gradient):
    return (-gradient * attention).clamp_min(0).mean(dim=1)


def _positive_part_dropped(attention, gradient):
    return (gradient * attention).mean(dim=1)


def _heads_summed(attention, gradient):
    return (gradient * attention).clamp_min(0).sum(dim=1)


def _transposed(values, grid, num_prefix_tokens):
    B = values.shape[0]
    return values[:, num_prefix_tokens:].reshape(B, grid[1], grid[0]).transpose(1, 2)


def _per_patch_sign_flipped(attributions, patch_size):
    B, C, H, W = attributions.shape
    p = patch_size
    return -attributions.reshape(B, C, H // p, p, W // p, p).sum(dim=(1, 3, 5))


def _target_ignored(model, images, target):
    with torch.no_grad():
        return model(images).argmax(dim=-1)


def _not_restoring_flags(model, enabled=False):
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled
    return _null()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name, bug", [
    ("chefer_layer", _sign_flipped), ("chefer_layer", _positive_part_dropped), ("chefer_layer", _heads_summed),
    ("chefer_update", lambda relevance, weighted: weighted @ relevance),  # identity missing from the update
    ("patch_grid", _transposed), ("class_targets", _target_ignored)])
def test_planted_chefer_bugs_fail(monkeypatch, model, images, name, bug):
    monkeypatch.setattr(ex, name, bug)
    fails(check_chefer, model, images)


def test_planted_heads_summed_in_attention_fails(monkeypatch, model, images):
    monkeypatch.setattr(ex, "ATTENTION_MAPS", {**ex.ATTENTION_MAPS, "attention": lambda m, x: ex.patch_grid(
        ex.capture(m, x, layers=[len(m.blocks) - 1])["attention"][:, 0].sum(dim=1)[:, 0], GRID, PREFIX)})
    fails(check_attention, model, images)


def test_planted_gradcam_transposed_reshape_fails(monkeypatch, model, images):
    def transposed(grid, num_prefix_tokens):
        return lambda t: t[:, num_prefix_tokens:].reshape(t.shape[0], grid[1], grid[0], -1).permute(0, 3, 2, 1)
    monkeypatch.setattr(ex, "tokens_to_channels", transposed)
    fails(check_gradcam, model, images)


def test_planted_attribution_bugs_fail(monkeypatch, model, images):
    monkeypatch.setattr(ex, "per_patch", _per_patch_sign_flipped)
    fails(check_completeness, model, images)
    fails(check_input_x_gradient, model, images)


def test_planted_flags_left_changed_fails(monkeypatch, model, images):
    monkeypatch.setattr(ex, "fused_attention", _not_restoring_flags)
    fails(check_leaves_model, model, images)


# ---------------------------------------------------------------- faithfulness


def check_perturbation(model, images):
    maps = torch.rand(images.shape[0], *GRID, generator=torch.Generator().manual_seed(3))
    targets = non_predicted(model, images)
    P = GRID[0] * GRID[1]
    curves = ex.perturbation_curves(model, images, maps, targets, steps=P, fill="mean")
    mean = images.mean(dim=(0, 2, 3), keepdim=True)  # (1, 3, 1, 1): the fill
    with torch.no_grad():
        def probability(x):
            return model(x).softmax(dim=-1).gather(1, targets[:, None])[:, 0]
        top = maps.flatten(1).argmax(dim=1)  # (B,)
        one_deleted, only_one = images.clone(), mean.expand_as(images).clone()
        for b, index in enumerate(top.tolist()):
            r, c = divmod(index, GRID[1])
            rows, cols = slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH)
            one_deleted[b, :, rows, cols] = mean[0]
            only_one[b, :, rows, cols] = images[b, :, rows, cols]
        assert torch.allclose(curves["deletion"][:, 0], probability(images), atol=1e-6)
        assert torch.allclose(curves["deletion"][:, 1], probability(one_deleted), atol=1e-6), "deletion, step 1"
        assert torch.allclose(curves["deletion"][:, -1], probability(mean.expand_as(images)), atol=1e-6)
        assert torch.allclose(curves["insertion"][:, 1], probability(only_one), atol=1e-6), "insertion, step 1"
        assert torch.allclose(curves["insertion"][:, -1], probability(images), atol=1e-6)


def test_perturbation_curves_delete_the_most_important_patch_first(model, images):
    passes(check_perturbation, model, images)


def test_planted_perturbation_bugs_fail(monkeypatch, model, images):
    with monkeypatch.context() as patch:  # least important first
        patch.setattr(ex, "importance_order", lambda maps: maps.flatten(1).argsort(dim=1))
        fails(check_perturbation, model, images)
    with monkeypatch.context() as patch:  # the background (black) fill the issue warns against
        patch.setattr(ex, "fill_images", lambda images, fill, p: torch.full_like(images, -2.0))
        fails(check_perturbation, model, images)


def test_fills(images):
    mean = ex.fill_images(images, "mean")
    assert mean.shape == images.shape and torch.allclose(mean[1, :, 0, 0], images.mean(dim=(0, 2, 3)))
    blurred = ex.fill_images(images, "blur", PATCH)
    assert blurred.shape == images.shape and blurred.std() < 0.5 * images.std()
    with pytest.raises(VitInspectError, match="fill must be"):
        ex.fill_images(images, "black")


def test_road_is_seeded_and_reversing_the_map_reverses_it(model, images):
    maps = torch.rand(images.shape[0], *GRID, generator=torch.Generator().manual_seed(3))
    targets = non_predicted(model, images)
    score = ex.road_scores(model, images, maps, targets)
    assert score.shape == (images.shape[0],)
    assert torch.equal(score, ex.road_scores(model, images, maps, targets))
    # most-relevant-first on -m removes what least-relevant-first on m removes (up to the imputation noise)
    assert torch.allclose(ex.road_scores(model, images, -maps, targets), -score, atol=0.02)
    assert score.abs().max() > 0.05, "ROAD does not see the map"


# ---------------------------------------------------------------- sanity checks


@pytest.fixture(scope="module")
def small_vit():
    from vit_inspect.training import ViTSpec, build_vit

    model = build_vit(ViTSpec(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=4), seed=0)
    randomise_constant_init(model)
    return model


def check_cascade(model, images):
    targets = torch.zeros(images.shape[0], dtype=torch.long)
    attention = ex.cascading_randomisation(model, images, "attention", targets, seed=5)  # (L + 1, B)
    brightness = ex.cascading_randomisation(model, images, "brightness", targets, seed=5)
    assert attention.shape == (len(model.blocks) + 1, images.shape[0])
    assert torch.allclose(attention[0], torch.ones(1, dtype=attention.dtype)) and torch.all(brightness > 0.999)
    assert attention[-1].mean() < 0.9, "last-layer attention did not notice its block re-initialised"


def test_cascading_randomisation(small_vit):
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    passes(check_cascade, small_vit, images)


def test_planted_cascade_without_randomisation_fails(monkeypatch, small_vit):
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(ex, "randomise_top_blocks", lambda model, count, seed: copy.deepcopy(model))
    fails(check_cascade, small_vit, images)


def test_data_randomisation(small_vit):
    from vit_inspect.training import build_vit, spec_of

    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(4, dtype=torch.long)
    other = build_vit(spec_of(small_vit), seed=1)
    same = ex.data_randomisation(small_vit, small_vit, images, "chefer", targets)
    assert torch.allclose(same, torch.ones(4, dtype=same.dtype))
    assert ex.data_randomisation(small_vit, other, images, "chefer", targets).mean() < 0.9
    assert torch.all(ex.data_randomisation(small_vit, other, images, "edges", targets) > 0.999)


# ---------------------------------------------------------------- the ranking table


def synthetic_table(chefer_deletion: float) -> dict[str, dict[str, torch.Tensor]]:
    row = {k: torch.tensor([0.5, 0.01], dtype=torch.float64) for k in ex.MEASURES}
    table = {m: dict(row) for m in ("chefer", "brightness", "edges", "random")}
    table["chefer"]["deletion"] = torch.tensor([chefer_deletion, 0.01], dtype=torch.float64)
    return table


def test_interval_is_the_mean_and_1_96_standard_errors():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, half = ex.interval(values).tolist()
    assert mean == pytest.approx(2.5) and half == pytest.approx(1.96 * values.std().item() / 2)


def test_faithful_only_beyond_both_baselines_intervals(tmp_path):
    assert ex.faithful_methods(synthetic_table(0.47))["deletion"] == ["chefer"]  # 0.47 + 0.01 < 0.5 - 0.01
    assert ex.faithful_methods(synthetic_table(0.49))["deletion"] == []  # the intervals overlap
    assert ex.faithful_methods(synthetic_table(0.53))["deletion"] == []  # worse: deletion is better low
    table = synthetic_table(0.47)
    table["edges"]["deletion"] = torch.tensor([0.45, 0.01], dtype=torch.float64)
    assert not ex.beats(table, "chefer", "deletion"), "must beat the edges baseline too"
    path = ex.save_ranking(table, tmp_path / "t.json", {"how": "synthetic"})
    loaded, notes = ex.load_ranking(path)
    assert notes == {"how": "synthetic"} and torch.equal(loaded["edges"]["deletion"], table["edges"]["deletion"])
    assert "chefer" in ex.format_ranking(loaded)
    with pytest.raises(VitInspectError, match="not a ranking table"):
        ex.load_ranking(tmp_path / "missing.json")
