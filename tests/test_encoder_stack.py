"""Notebook 04 helpers: LayerNorm, GELU, MLP, the residual additions and the whole stack, against timm.

The mutation tests at the end plant one bug at a time in a helper (monkeypatched) and show
that the check the suite relies on fails on it, and passes on the real code.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from vit_inspect import (VitInspectError, self_attention_by_hand, block_by_hand, create_untrained, gelu_exact,
                         gelu_of, gelu_tanh, layer_norm_by_hand, mlp_by_hand, run_blocks_one_at_a_time,
                         tokens_with_position)
from vit_inspect import encoder_stack

from .mutation import View, fails, passes


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


def gelu_of_matches_the_module(gelu_of):
    """The by-hand GELU read off each kind of nn.GELU equals that module, and not the other kind."""
    x = torch.linspace(-6, 6, 2001)
    for approximate, other in (("none", "tanh"), ("tanh", "none")):
        assert_close(gelu_of(nn.GELU(approximate=approximate))(x), nn.GELU(approximate=approximate)(x))
        assert not torch.allclose(gelu_of(nn.GELU(approximate=approximate))(x), nn.GELU(approximate=other)(x))


def test_gelu_of_reads_the_form_off_the_module_and_refuses_others():
    passes(gelu_of_matches_the_module, gelu_of)
    fails(gelu_of_matches_the_module, lambda act: gelu_exact)  # "ViT-B uses the exact GELU", assumed
    with pytest.raises(VitInspectError, match="nn.GELU only"):
        gelu_of(nn.ReLU())


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
        # a chain through 12 blocks: rtol = atol = 1e-4 leaves room for the larger streams of trained weights
        assert_close(run["final"], tiny.forward_features(images), rtol=1e-4, atol=1e-4)
        assert_close(run["stream"][4], tiny.blocks[:4](tiny._pos_embed(tiny.patch_embed(images))))
        assert_close(run["residual_norms"][7], run["stream"][7].norm(dim=-1))
        with pytest.raises(AssertionError):  # the last block's output is not the normed output
            assert_close(run["stream"][-1], run["final"])


# ---------------------------------------------------------------- mutation tests

def check_layer_norms(model, x):
    """The helper equals every LayerNorm of the model (their gamma and beta are not 1 and 0)."""
    with torch.no_grad():
        for norm in (model.blocks[0].norm1, model.blocks[5].norm2, model.norm):
            assert_close(encoder_stack.layer_norm_by_hand(norm, x), norm(x))


def check_mlp(model, x):
    with torch.no_grad():
        assert_close(encoder_stack.mlp_by_hand(model.blocks[4].mlp, x), model.blocks[4].mlp(x))


def check_block(model, x):
    with torch.no_grad():
        assert_close(encoder_stack.block_by_hand(model.blocks[6], x)["out"], model.blocks[6](x))


def check_whole_stack(model, images):
    with torch.no_grad():
        run = encoder_stack.run_blocks_one_at_a_time(model, images)
        assert_close(run["final"], model.forward_features(images), rtol=1e-4, atol=1e-4)


REAL = {name: getattr(encoder_stack, name) for name in
        ("layer_norm_by_hand", "linear_by_hand", "self_attention_by_hand", "block_by_hand", "final_norm_by_hand")}


def normalised_only(norm, x):  # gamma and beta dropped
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + norm.eps)


def beta_dropped(norm, x):
    return normalised_only(norm, x) * norm.weight


def bias_dropped(layer, x):
    return x @ layer.weight.T


def attention_with_norm2(block, x, mistake=None):
    return REAL["self_attention_by_hand"](View(block, norm1=block.norm2), x, mistake)


def block_with_norm1_before_the_mlp(block, x):
    return REAL["block_by_hand"](View(block, norm2=block.norm1), x)


def no_final_norm(model, z):
    return z


def final_norm_of_the_last_block(model, z):
    return REAL["layer_norm_by_hand"](model.blocks[-1].norm2, z)


@pytest.mark.parametrize("name, bug, check", [
    ("layer_norm_by_hand", normalised_only, check_layer_norms),
    ("layer_norm_by_hand", beta_dropped, check_layer_norms),
    ("linear_by_hand", bias_dropped, check_mlp),
    ("self_attention_by_hand", attention_with_norm2, check_block),
    ("block_by_hand", block_with_norm1_before_the_mlp, check_whole_stack),
    ("final_norm_by_hand", no_final_norm, check_whole_stack),
    ("final_norm_by_hand", final_norm_of_the_last_block, check_whole_stack),
], ids=["gamma and beta dropped", "beta dropped", "linear bias dropped", "norm2 for norm1",
        "norm1 for norm2", "final norm dropped", "wrong final norm"])
def test_mutation_in_the_encoder_is_caught(tiny, images, z0, monkeypatch, name, bug, check):
    data = images if check is check_whole_stack else z0
    passes(check, tiny, data)
    monkeypatch.setattr(encoder_stack, name, bug)
    fails(check, tiny, data)
