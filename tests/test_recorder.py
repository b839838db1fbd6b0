"""capture(): every layer's attention from one forward pass, on several timm ViTs (untrained)."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from vit_inspect import VitInspectError, capture, create_untrained
from vit_inspect.recorder import fused_attention_flags

# name, create_model kwargs, input (H, W), batch, expected prefix tokens, expected grid
MODELS = {
    "vit_base_patch16_224": ("vit_base_patch16_224", {}, (224, 224), 1, 1, (14, 14)),
    "vit_small_patch16_224": ("vit_small_patch16_224", {}, (224, 224), 2, 1, (14, 14)),
    "vit_base_patch32_224": ("vit_base_patch32_224", {}, (224, 224), 2, 1, (7, 7)),
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224", {}, (224, 224), 2, 2, (14, 14)),
    "registers_dinov2": ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, (224, 224), 1, 5, (16, 16)),
    "input_384": ("vit_tiny_patch16_384", {}, (384, 384), 1, 1, (24, 24)),
    "non_square_dynamic": ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (160, 224), 2, 1, (10, 14)),
}


def make_model(name: str, kwargs: dict) -> torch.nn.Module:
    return create_untrained(name, seed=0, **kwargs)


@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def case(request):
    name, kwargs, size, batch, prefix, grid = MODELS[request.param]
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    return make_model(name, kwargs), images, prefix, grid


def attention_by_hand(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) with q, k from qkv(LayerNorm(x)), written out: (B, H, N, N)."""
    B, N, D = x.shape
    attn = block.attn
    H = attn.num_heads
    d = attn.qkv.out_features // (3 * H)
    normed = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = normed @ attn.qkv.weight.T  # (B, N, 3*H*d)
    if attn.qkv.bias is not None:
        qkv = qkv + attn.qkv.bias
    q, k, _ = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
    scores = (attn.q_norm(q) @ attn.k_norm(k).transpose(-2, -1)) / math.sqrt(d)  # (B, H, N, N)
    return scores.softmax(dim=-1)


def tokens_before_blocks(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))  # (B, N, D)


@torch.inference_mode()
def test_captured_attention_equals_hand_recomputation(case):
    model, images, prefix, (gh, gw) = case
    out = capture(model, images, blocks=True)
    B, L, N = images.shape[0], len(model.blocks), prefix + gh * gw
    assert out["attention"].shape == (B, L, model.blocks[0].attn.num_heads, N, N)
    assert out["blocks"].shape == (B, L, N, model.embed_dim)
    x = tokens_before_blocks(model, images)
    for layer, block in enumerate(model.blocks):
        torch.testing.assert_close(out["attention"][:, layer], attention_by_hand(block, x),
                                   rtol=1e-4, atol=1e-5)
        x = block(x)
        torch.testing.assert_close(out["blocks"][:, layer], x, rtol=1e-4, atol=1e-4)


def test_rows_sum_to_one_and_logits_equal_plain_forward(case):
    model, images, _, _ = case
    with torch.inference_mode():
        before = model(images)
    out = capture(model, images)
    with torch.inference_mode():
        after = model(images)
    row_sums = out["attention"].sum(dim=-1)
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums))
    torch.testing.assert_close(out["logits"], before)
    assert torch.equal(before, after)


def test_model_left_exactly_as_it_was(case):
    model, images, _, _ = case
    flags = fused_attention_flags(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, images[:1], layers=[0], blocks=True)
    assert fused_attention_flags(model) == flags and not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_chosen_layers_in_the_given_order(tiny):
    images = torch.randn(2, 3, 224, 224)
    full = capture(tiny, images, blocks=True)
    some = capture(tiny, images, layers=[5, 0, 11], blocks=True)
    assert torch.equal(some["attention"], full["attention"][:, [5, 0, 11]])
    assert torch.equal(some["blocks"], full["blocks"][:, [5, 0, 11]])
    assert "blocks" not in capture(tiny, images[:1], layers=[1])


@pytest.mark.parametrize("layers", [[12], [-1], [0, 40], []])
def test_out_of_range_layers_are_one_line_errors(tiny, layers):
    with pytest.raises(VitInspectError) as err:
        capture(tiny, torch.randn(1, 3, 224, 224), layers=layers)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fused", [True, False])
def test_same_attention_whatever_the_fused_setting(tiny, fused):
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    reference = capture(tiny, images)["attention"]
    for module in tiny.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    try:
        assert torch.equal(capture(tiny, images)["attention"], reference)
        assert set(fused_attention_flags(tiny).values()) == {fused}
    finally:
        for module in tiny.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = True


def test_flags_and_hooks_restored_after_an_exception_inside(tiny, monkeypatch):
    images = torch.randn(1, 3, 224, 224)
    tiny.blocks[3].attn.fused_attn = False  # a mixed setting, each flag must come back as it was
    flags = fused_attention_flags(tiny)
    with torch.inference_mode():
        before = tiny(images)

    def fail(*args, **kwargs):
        raise RuntimeError("boom in block 6")

    try:
        monkeypatch.setattr(tiny.blocks[6].mlp, "forward", fail)
        with pytest.raises(RuntimeError, match="boom in block 6"):
            capture(tiny, images, blocks=True)
        monkeypatch.undo()
        assert fused_attention_flags(tiny) == flags
        assert all(not m._forward_hooks for m in tiny.modules())
        with torch.inference_mode():
            assert torch.equal(tiny(images), before)
        assert capture(tiny, images)["attention"].shape[1] == 12
    finally:
        tiny.blocks[3].attn.fused_attn = True


def test_outputs_are_ordinary_tensors(tiny):
    out = capture(tiny, torch.randn(1, 3, 224, 224))
    assert not any(t.is_inference() or t.requires_grad for t in out.values())
    out["attention"][0, 0, 0, 0, 0] = 0.0  # would raise on an inference-mode tensor


def test_training_mode_is_refused_and_kept(tiny):
    tiny.train()
    try:
        with pytest.raises(VitInspectError, match="eval"):
            capture(tiny, torch.randn(1, 3, 224, 224))
        assert tiny.training
    finally:
        tiny.eval()


def test_a_model_without_vit_blocks_is_refused():
    with pytest.raises(VitInspectError, match="blocks"):
        capture(torch.nn.Linear(4, 4).eval(), torch.randn(1, 4))


def test_reused_output_is_written_in_place_and_equals_a_fresh_capture(tiny):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    fresh = capture(tiny, images)["attention"]  # (B, L, H, N, N)
    buffer = torch.full_like(fresh, float("nan"))
    reused = capture(tiny, images, attention_out=buffer)["attention"]
    assert reused.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)


def test_reused_output_of_the_wrong_shape_is_refused_and_model_restored(tiny):
    flags = fused_attention_flags(tiny)
    images = torch.randn(2, 3, 224, 224)
    with pytest.raises(VitInspectError, match="attention_out has shape"):
        capture(tiny, images, attention_out=torch.empty(3, 12, 3, 197, 197))
    assert fused_attention_flags(tiny) == flags
    assert not any(m._forward_hooks for m in tiny.modules())
