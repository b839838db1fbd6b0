"""Notebook 04 helpers: LayerNorm, GELU, MLP, the residual additions and the whole stack, against timm."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from vit_inspect import (VitInspectError, self_attention_by_hand, block_by_hand, create_untrained, gelu_exact,
                         gelu_tanh, layer_norm_by_hand, mlp_by_hand, run_blocks_one_at_a_time,
                         tokens_with_position)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def z0(tiny, images):
    with torch.no_grad():
        return tokens_with_position(tiny, tiny.patch_embed(images))


@pytest.fixture(scope="module")
def affine_norm():
    norm = nn.LayerNorm(192, eps=1e-6)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(192, generator=generator))
        norm.bias.copy_(torch.randn(192, generator=generator))
    return norm


def test_layer_norm_by_hand_equals_nn_layernorm(tiny, z0, affine_norm):
    assert tiny.blocks[0].norm1.eps == 1e-6
    with torch.no_grad():
        assert_close(layer_norm_by_hand(affine_norm, z0), affine_norm(z0))
        assert_close(layer_norm_by_hand(tiny.blocks[3].norm2, z0), tiny.blocks[3].norm2(z0))


def test_layer_norm_with_the_unbiased_variance_is_wrong(z0, affine_norm):
    mean, var = z0.mean(-1, keepdim=True), z0.var(-1, keepdim=True, unbiased=True)
    wrong = (z0 - mean) / torch.sqrt(var + affine_norm.eps) * affine_norm.weight + affine_norm.bias
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_close(wrong, affine_norm(z0))


def test_layer_norm_by_hand_refuses_other_norms(z0):
    with pytest.raises(VitInspectError, match="LayerNorm"):
        layer_norm_by_hand(nn.BatchNorm1d(192), z0)


def test_gelu_exact_and_tanh_match_torch_but_not_each_other():
    x = torch.linspace(-6, 6, 2001)
    assert_close(gelu_exact(x), F.gelu(x))
    assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"))
    difference = (gelu_exact(x) - gelu_tanh(x)).abs().max()
    assert 1e-4 < difference < 1e-3
    with pytest.raises(AssertionError):
        assert_close(gelu_tanh(x), gelu_exact(x))


def test_mlp_by_hand_equals_timm(tiny, z0):
    mlp = tiny.blocks[2].mlp
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (192, 768, 192)
    with torch.no_grad():
        assert_close(mlp_by_hand(mlp, z0), mlp(z0))


def test_block_by_hand_equals_timm_and_needs_both_residuals(tiny, z0):
    block = tiny.blocks[0]
    with torch.no_grad():
        steps = block_by_hand(block, z0)
        expected = block(z0)
        assert_close(steps["out"], expected)
        assert_close(steps["mid"], z0 + block.attn(block.norm1(z0)))
        no_first = steps["attn"] + mlp_by_hand(block.mlp, layer_norm_by_hand(block.norm2, steps["attn"]))
        no_second = steps["mlp"]
    for wrong in (no_first, no_second):
        with pytest.raises(AssertionError):
            assert_close(wrong, expected)


def test_a_block_with_norm1_skipped_is_wrong(tiny, z0):
    block = tiny.blocks[0]
    with torch.no_grad():
        wrong_attn = self_attention_by_hand(block, z0, "skip_norm1")["out"]
        wrong = z0 + wrong_attn + block.mlp(block.norm2(z0 + wrong_attn))
        with pytest.raises(AssertionError):
            assert_close(wrong, block(z0))


def test_blocks_one_at_a_time_equal_forward_features(tiny, images):
    with torch.no_grad():
        run = run_blocks_one_at_a_time(tiny, images)
        assert run["stream"].shape == (13, 2, 197, 192)
        assert run["residual_norms"].shape == (13, 2, 197)
        assert_close(run["final"], tiny.forward_features(images))
        assert_close(run["stream"][4], tiny.blocks[:4](tiny._pos_embed(tiny.patch_embed(images))))
        assert_close(run["residual_norms"][7], run["stream"][7].norm(dim=-1))
        with pytest.raises(AssertionError):  # the last block's output is not the normed output
            assert_close(run["stream"][-1], run["final"])
