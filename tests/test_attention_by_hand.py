"""Notebook 03 helpers: multi-head self-attention by hand against timm, and each course mistake against both."""
import pytest
import torch
from torch.testing import assert_close

from vit_inspect import (MISTAKES, VitInspectError, create_untrained, mistake_errors, preprocess,
                         query_attention_maps, sample_images, self_attention_by_hand, timm_attention_weights,
                         token_index, tokens_with_position)
from vit_inspect.recorder import fused_attention_flags


@pytest.fixture(scope="module")
def z0(tiny):
    with torch.no_grad():
        images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
        return tokens_with_position(tiny, tiny.patch_embed(images))


@pytest.mark.parametrize("index", [0, 11])
def test_attention_by_hand_equals_timm(tiny, z0, index):
    block = tiny.blocks[index]
    with torch.no_grad():
        steps = self_attention_by_hand(block, z0)
        expected = block.attn(block.norm1(z0))
        weights = timm_attention_weights(block, z0)
    B, N, D, H, d = 2, 197, 192, 3, 64
    shapes = {"normed": (B, N, D), "qkv": (B, N, 3 * D), "q": (B, H, N, d), "k": (B, H, N, d),
              "v": (B, H, N, d), "scores": (B, H, N, N), "attn": (B, H, N, N), "merged": (B, N, D), "out": (B, N, D)}
    assert {name: tuple(t.shape) for name, t in steps.items()} == shapes
    assert_close(steps["out"], expected)
    assert_close(steps["attn"], weights)
    assert_close(steps["attn"].sum(dim=-1), torch.ones(B, H, N))


def test_attention_by_hand_on_vit_base_with_a_real_image():
    model = create_untrained("vit_base_patch16_224")
    images = preprocess(sample_images()[0], model).tensor
    with torch.no_grad():
        x = tokens_with_position(model, model.patch_embed(images))
        steps = self_attention_by_hand(model.blocks[0], x)
        assert steps["qkv"].reshape(1, 197, 3, 12, 64).shape == (1, 197, 3, 12, 64)
        assert steps["scores"].shape == (1, 12, 197, 197)
        assert_close(steps["out"], model.blocks[0].attn(model.blocks[0].norm1(x)))
        assert_close(steps["attn"], timm_attention_weights(model.blocks[0], x))


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_measurably_wrong(tiny, z0, mistake):
    block = tiny.blocks[0]
    with torch.no_grad():
        wrong = self_attention_by_hand(block, z0, mistake)
        expected = block.attn(block.norm1(z0))
        weights = timm_attention_weights(block, z0)
        relative = mistake_errors(block, z0)[mistake]["out"]
    with pytest.raises(AssertionError):
        assert_close(wrong["out"], expected)
    with pytest.raises(AssertionError):
        assert_close(wrong["attn"], weights)
    assert relative > 0.05


def test_wrong_weights_no_longer_form_a_distribution(tiny, z0):
    with torch.no_grad():
        for mistake in ("no_softmax", "divide_after_softmax"):
            rows = self_attention_by_hand(tiny.blocks[0], z0, mistake)["attn"].sum(dim=-1)
            with pytest.raises(AssertionError):
                assert_close(rows, torch.ones_like(rows))


def test_unknown_mistake_is_a_one_line_error(tiny, z0):
    with pytest.raises(VitInspectError, match="unknown attention mistake"):
        self_attention_by_hand(tiny.blocks[0], z0, "no_norm2")


def test_capturing_timm_weights_leaves_the_block_as_it_was(tiny, z0):
    block = tiny.blocks[1]
    flags = fused_attention_flags(tiny)
    timm_attention_weights(block, z0)
    assert fused_attention_flags(tiny) == flags
    assert not block.attn.attn_drop._forward_hooks
    with pytest.raises(RuntimeError):  # wrong width: the forward fails inside the hook's scope
        timm_attention_weights(block, z0[..., :100])
    assert fused_attention_flags(tiny) == flags
    assert not block.attn.attn_drop._forward_hooks


def test_query_maps_pick_the_row_of_the_query_over_patch_keys(tiny, z0):
    with torch.no_grad():
        attn = self_attention_by_hand(tiny.blocks[0], z0)["attn"]
    query = token_index(2, 5, (14, 14), 1)
    assert query == 1 + 2 * 14 + 5
    maps = query_attention_maps(attn, (14, 14), 1, query, image=1)
    assert maps.shape == (3, 14, 14)
    assert_close(maps[:, 3, 4], attn[1, :, query, 1 + 3 * 14 + 4], rtol=0, atol=0)
    assert_close(maps.sum(dim=(1, 2)) + attn[1, :, query, 0], torch.ones(3))
    with pytest.raises(VitInspectError, match="outside"):
        token_index(14, 0, (14, 14), 1)
    with pytest.raises(VitInspectError, match="outside"):
        query_attention_maps(attn, (14, 14), 1, 197)
