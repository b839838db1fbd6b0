"""Notebook 07 helpers: the scratch ViT equals timm module by module, its key mapping, its refusals, its mutations.

Every model here is untrained and then perturbed (seeded noise on every parameter): a fresh
timm ViT has LayerNorms at 1/0, zero biases and a class token near 0, which would hide a
swapped norm or a dropped bias. Comparisons run in float64, where the two implementations
agree to ~1e-14, so assert_close's float64 tolerances (1e-7) leave no room for a real bug.
"""
import copy

import pytest
import timm
import torch
from einops import rearrange
from timm.layers import Attention
from torch import nn
from torch.testing import assert_close

from vit_inspect import (SCRATCH_FROM_TIMM, MultiHeadAttention, ScratchConfig, ScratchViT, VitInspectError, capture,
                         create_untrained, from_timm, parameter_groups, parameter_table, perturb_parameters,
                         step_differences, timm_steps)
from vit_inspect.from_scratch import key_pairs

STAGES = ("patches", "tokens", "blocks", "attention", "normed", "logits")


def perturbed(name: str, **kwargs) -> nn.Module:
    """An untrained timm model in float64 where every parameter differs from its init value."""
    return perturb_parameters(create_untrained(name, seed=0, **kwargs), seed=1).double()


def images_for(model: nn.Module, batch: int = 2) -> torch.Tensor:
    H, W = model.patch_embed.img_size
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def assert_same_as_timm(scratch: nn.Module, model: nn.Module, images: torch.Tensor) -> dict:
    """Every stage equal; returns timm's stages (its attention recorded by ``capture``)."""
    with torch.no_grad():
        steps = scratch.forward_steps(images)
    expected = timm_steps(model, images)
    for stage in STAGES:
        assert_close(steps[stage], expected[stage], msg=lambda m: f"{stage}: {m}")
    return expected


@pytest.fixture(scope="module")
def small(tiny):
    """ViT-Ti/16 (12 blocks, D = 192, 3 heads), perturbed, float64; never modified by a test."""
    return perturb_parameters(copy.deepcopy(tiny), seed=3).double()


CONFIGS = [
    ("vit_base_patch16_224", {}),
    ("vit_small_patch16_224", {}),
    ("vit_base_patch32_224", {}),
    ("vit_large_patch16_224", {"depth": 2}),  # L/16's widths (D = 1024, 16 heads), two of its 24 blocks
    ("vit_base_patch16_384", {"depth": 2}),   # 384 x 384 input: 24 x 24 patches, N = 577
]


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_scratch_vit_equals_timm_module_by_module(name, kwargs):
    model = perturbed(name, **kwargs)
    scratch = from_timm(model)
    images = images_for(model, batch=2 if "small" in name else 1)
    expected = assert_same_as_timm(scratch, model, images)  # attention: capture's (B, L, H, N, N)
    with torch.no_grad():
        assert_close(scratch(images), expected["logits"])  # the plain forward, not only forward_steps
    gh, gw = (s // model.patch_embed.patch_size[0] for s in model.patch_embed.img_size)
    assert expected["attention"].shape == (len(images), len(model.blocks), model.blocks[0].attn.num_heads,
                                           1 + gh * gw, 1 + gh * gw)


def test_the_mapping_round_trips_exactly(small):
    scratch = from_timm(small)
    back = scratch.to_timm_state_dict()
    original = small.state_dict()
    assert back.keys() == original.keys()
    for key in original:
        assert torch.equal(back[key], original[key]), key
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False).double()
    fresh.load_state_dict(back, strict=True)
    with torch.no_grad():
        assert_close(fresh.eval()(images_for(small)), small(images_for(small)))


def test_from_timm_copies_and_never_shares_storage(small):
    scratch = from_timm(small)
    with torch.no_grad():
        scratch.blocks[0].norm1.weight.add_(1.0)
    assert not torch.equal(scratch.blocks[0].norm1.weight, small.blocks[0].norm1.weight)
    assert scratch.to_timm_state_dict()["blocks.0.norm1.weight"].data_ptr() != small.blocks[0].norm1.weight.data_ptr()


def test_the_key_mapping_names_every_parameter_once():
    for config in (ScratchConfig(depth=2), ScratchConfig(depth=2, qkv_bias=False, num_classes=0)):
        with torch.device("meta"):
            scratch = ScratchViT(config)
        pairs = key_pairs(config)
        assert sorted(s for s, _ in pairs) == sorted(scratch.state_dict())
        assert len({t for _, t in pairs}) == len(pairs)
    assert len(SCRATCH_FROM_TIMM) == 20


def test_the_patch_embedding_weight_is_the_kernel_flattened_in_cutting_order(small):
    scratch = from_timm(small)
    kernel = small.patch_embed.proj.weight  # (D, C, P, P)
    linear = scratch.patch_embedding.projection.weight  # (D, P*P*C)
    assert linear.shape == (192, 16 * 16 * 3)
    assert torch.equal(linear[:, :3], kernel[:, :, 0, 0])  # first pixel of the patch: its 3 channels
    assert torch.equal(linear, rearrange(kernel, "d c p1 p2 -> d (p1 p2 c)"))
    channel_first = rearrange(kernel, "d c p1 p2 -> d (c p1 p2)")
    assert not torch.equal(linear, channel_first)


@pytest.mark.parametrize("config", [{"qkv_bias": False}, {"num_classes": 0}], ids=["no qkv bias", "no head"])
def test_other_plain_configurations(config):
    model = perturbed("vit_tiny_patch16_224", depth=2, **config)
    scratch = from_timm(model)
    assert (scratch.blocks[0].attention.qkv.bias is None) == (model.blocks[0].attn.qkv.bias is None)
    with torch.no_grad():
        assert_close(scratch(images_for(model)), model(images_for(model)))
    assert scratch.to_timm_state_dict().keys() == model.state_dict().keys()


# ---- architectures the plain ViT cannot hold: one error naming the keys or the setting


def _gated(model: nn.Module) -> nn.Module:
    model.blocks[0].attn = Attention(192, num_heads=3, qkv_bias=True, gated=True)
    return model


REFUSED = [
    ("registers", {"reg_tokens": 4}, None, "4 register tokens (key reg_token)"),
    ("no class token", {"class_token": False, "global_pool": "avg"}, None, "no class token (key cls_token missing)"),
    ("gated attention", {}, _gated, "gated attention (keys blocks.*.attn.gate.*)"),
    ("LayerScale", {"init_values": 1e-5}, None, "blocks.0.ls1.gamma"),
    ("q/k norms", {"qk_norm": True}, None, "blocks.0.attn.k_norm.bias"),
    ("mean pooling", {"global_pool": "avg"}, None, "global_pool='avg'"),
    ("no class row in pos_embed", {"no_embed_class": True}, None, "no_embed_class=True"),
    ("CLIP-style pre-norm", {"pre_norm": True}, None, "norm_pre.weight"),
    ("tanh GELU", {"act_layer": "gelu_tanh"}, None, "not the exact GELU"),
]


@pytest.mark.parametrize("what, kwargs, change, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_from_timm_refuses_what_it_cannot_hold(what, kwargs, change, message):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, **kwargs)
    model = change(model) if change else model
    with pytest.raises(VitInspectError, match="is not a plain ViT") as error:
        from_timm(model)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_from_timm_refuses_layer_norms_with_different_eps():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    model.blocks[1].norm2.eps = 1e-5  # the scratch model has one eps for all its LayerNorms
    with pytest.raises(VitInspectError, match=r"LayerNorms with different eps \[1e-06, 1e-05\]"):
        from_timm(model)


def test_from_timm_refuses_a_distilled_deit_naming_its_token():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1)
    with pytest.raises(VitInspectError, match=r"distillation token \(key dist_token\)"):
        from_timm(model)


def test_from_timm_refuses_what_is_not_a_vit():
    with pytest.raises(VitInspectError, match="not a timm VisionTransformer"):
        from_timm(nn.Linear(3, 3))


def test_scratch_vit_refuses_another_image_size(small):
    scratch = from_timm(small)
    with pytest.raises(VitInspectError, match=r"takes \(B, 3, 224, 224\).*14x14 grid"):
        scratch(torch.zeros(1, 3, 384, 384, dtype=torch.float64))


# ---- planted bugs: each must make the comparison with timm fail, at block 0, after equal embeddings


def _first_wrong_stage(scratch: nn.Module, model: nn.Module) -> dict:
    images = images_for(model, batch=1)
    with torch.no_grad():
        steps = scratch.forward_steps(images)
    expected = timm_steps(model, images)
    with pytest.raises(AssertionError):
        assert_same_as_timm(scratch, model, images)
    return step_differences(steps, expected)


def _assert_wrong_from_block_0(gaps: dict) -> None:
    assert gaps["patches"] < 1e-12 and gaps["tokens"] < 1e-12, "the embeddings are not affected"
    assert gaps["blocks"][0] > 1e-3, "block 0's output is wrong"
    assert gaps["logits"] > 1e-3


@pytest.mark.parametrize("scale", [1.0, 192 ** -0.5], ids=["scale forgotten", "1 over sqrt(D) not sqrt(d)"])
def test_mutation_wrong_scale_is_caught(small, scale):
    scratch = from_timm(small)
    for block in scratch.blocks:
        block.attention.scale = scale  # softmax(q k^T) or the course's q k^T / sqrt(D), not q k^T / sqrt(d)
    gaps = _first_wrong_stage(scratch, small)
    _assert_wrong_from_block_0(gaps)
    assert gaps["attention"][0] > 1e-3


def test_mutation_norm1_skipped_is_caught(small):
    scratch = from_timm(small)
    for block in scratch.blocks:
        block.norm1 = nn.Identity()  # qkv applied to z itself
    gaps = _first_wrong_stage(scratch, small)
    _assert_wrong_from_block_0(gaps)
    assert gaps["attention"][0] > 1e-3


def test_mutation_heads_merged_in_the_wrong_order_is_caught(small, monkeypatch):
    # (h d) -> (d h): every head's 64 numbers interleaved instead of side by side
    monkeypatch.setattr(MultiHeadAttention, "merge_heads", staticmethod(lambda x: rearrange(x, "b h n d -> b n (d h)")))
    gaps = _first_wrong_stage(from_timm(small), small)
    _assert_wrong_from_block_0(gaps)
    assert gaps["attention"][0] < 1e-12, "the weights are right; only what is done with them is wrong"


# ---- what timm computes, recorded; parameter counts; the perturbation


def test_timm_steps_leaves_the_model_as_it_was(small):
    hooks_before = sum(len(m._forward_hooks) for m in small.modules())
    flags = [m.fused_attn for m in small.modules() if hasattr(m, "fused_attn")]
    steps = timm_steps(small, images_for(small, batch=1))
    assert sum(len(m._forward_hooks) for m in small.modules()) == hooks_before
    assert [m.fused_attn for m in small.modules() if hasattr(m, "fused_attn")] == flags
    shapes = {stage: tuple(steps[stage].shape) for stage in STAGES}
    assert shapes == {"patches": (1, 196, 192), "tokens": (1, 197, 192), "blocks": (1, 12, 197, 192),
                      "attention": (1, 12, 3, 197, 197), "normed": (1, 197, 192), "logits": (1, 1000)}
    assert torch.equal(steps["attention"], capture(small, images_for(small, batch=1))["attention"])
    with torch.no_grad():
        assert_close(steps["logits"], small(images_for(small, batch=1)))
        assert_close(steps["normed"], small.forward_features(images_for(small, batch=1)))


def test_step_differences_per_block_and_shape_check():
    a = {"blocks": torch.zeros(2, 3, 5, 4), "logits": torch.zeros(2, 10)}
    b = {"blocks": torch.zeros(2, 3, 5, 4), "logits": torch.ones(2, 10)}
    b["blocks"][1, 2, 0, 0] = -0.5
    gaps = step_differences(a, b)
    assert_close(gaps["blocks"], torch.tensor([0.0, 0.0, 0.5]))
    assert_close(gaps["logits"], torch.tensor(1.0))
    with pytest.raises(VitInspectError, match="logits: shape"):
        step_differences({"logits": torch.zeros(1, 10)}, {"logits": torch.zeros(2, 10)})


def test_vit_b16_has_86_567_656_parameters_with_its_1000_class_head():
    with torch.device("meta"):  # counting needs no memory
        scratch = ScratchViT(ScratchConfig())
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    rows = parameter_table(scratch)
    groups = parameter_groups(rows)
    assert groups == {"class_token": 768, "position_embedding": 197 * 768, "patch_embedding": 768 * 768 + 768,
                      "blocks": 12 * 7_087_872, "final_norm": 2 * 768, "head": 768 * 1000 + 1000,
                      "total": 86_567_656}
    assert groups["total"] == sum(p.numel() for p in scratch.parameters())
    assert groups["total"] - groups["head"] == 85_798_656
    block = {row.module.removeprefix("blocks.0."): row for row in rows if row.module.startswith("blocks.0.")}
    assert {name: row.count for name, row in block.items()} == {
        "norm1": 1536, "attention.qkv": 1_771_776, "attention.proj": 590_592, "norm2": 1536,
        "mlp.fc1": 2_362_368, "mlp.fc2": 2_360_064}
    assert block["attention.qkv"].shapes == "(2304, 768) + (2304,)"
    assert parameter_groups(parameter_table(model))["total"] == 86_567_656


def test_perturb_parameters_changes_every_parameter_deterministically(tiny):
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    state = torch.random.get_rng_state()
    perturb_parameters(a, seed=5)
    perturb_parameters(b, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's random state is untouched"
    for (name, p), q, original in zip(a.named_parameters(), b.parameters(), tiny.parameters()):
        assert torch.equal(p, q), name
        assert (p != original).all(), f"{name} kept some of its init values"
    assert not torch.allclose(a.blocks[0].norm1.weight, a.blocks[0].norm2.weight)
