"""Notebook 03 helpers: multi-head self-attention by hand against timm, and each course mistake against both.

The mutation tests at the end plant one bug at a time in a helper (monkeypatched) and show
that the check the suite relies on fails on it, and passes on the real code.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vit_inspect import (MISTAKES, VitInspectError, attention_entropy, create_untrained, mistake_errors, preprocess,
                         query_attention_maps, sample_images, self_attention_by_hand, timm_attention_weights,
                         token_index, tokens_with_position)
from vit_inspect import attention_by_hand, model_info
from vit_inspect.recorder import fused_attention_flags

from .mutation import View, fails, passes


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
        shrunk = self_attention_by_hand(model.blocks[0], x, "divide_after_softmax")["merged"]
        unscaled = self_attention_by_hand(model.blocks[0], x, "no_scale")["merged"]
    assert_close(shrunk * math.sqrt(768), unscaled)  # D = 768: "merged" shrinks by sqrt(768) ~ 27.7


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
    assert relative > 1e-3  # far beyond float rounding (~1e-7); scale_by_sqrt_D on near-uniform attention is ~0.3%


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


def test_what_the_notebook_says_about_each_mistake_holds(tiny, z0):
    block, D = tiny.blocks[0], z0.shape[-1]
    with torch.no_grad():
        steps = {m: self_attention_by_hand(block, z0, m) for m in (None, *MISTAKES)}
    right = attention_entropy(steps[None]["attn"])  # (B, H, N)
    assert bool((attention_entropy(steps["no_scale"]["attn"]) < right).all()), "8x larger scores: sharper rows"
    assert bool((attention_entropy(steps["scale_by_sqrt_D"]["attn"]) > right).all()), "smaller scores: flatter rows"
    assert bool((right <= math.log(z0.shape[1]) + 1e-5).all())
    assert float(steps["no_softmax"]["attn"].min()) < 0, "scores used as weights go negative"
    assert_close(steps["divide_after_softmax"]["merged"] * math.sqrt(D), steps["no_scale"]["merged"])
    # the course as written: q k^T of the raw tokens, nothing else
    q, k, _ = block.attn.qkv(z0).reshape(2, 197, 3, 3, 64).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
    assert_close(steps["course_as_written"]["attn"], q @ k.transpose(-2, -1))


def test_entropy_of_uniform_and_one_hot_rows():
    uniform = torch.full((2, 5), 0.2)
    one_hot = torch.eye(5)[:2]
    assert_close(attention_entropy(uniform), torch.full((2,), math.log(5)))
    assert_close(attention_entropy(one_hot), torch.zeros(2))


def test_the_key_bias_cannot_matter_but_the_query_and_value_biases_do(tiny, z0):
    """Softmax ignores a constant added to a whole row, and q . b_k is constant along a row."""
    block = copy.deepcopy(tiny.blocks[0])
    with torch.no_grad():
        right = block.attn(block.norm1(z0))
        D = z0.shape[-1]
        changes = {}
        for part, name in enumerate("qkv"):
            saved = block.attn.qkv.bias.clone()
            block.attn.qkv.bias[part * D:(part + 1) * D] = 0
            changes[name] = float((block.attn(block.norm1(z0)) - right).norm() / right.norm())
            block.attn.qkv.bias.copy_(saved)
    assert changes["k"] < 1e-5 and changes["q"] > 1e-3 and changes["v"] > 1e-3, changes


# ---------------------------------------------------------------- mutation tests

def check_attention_equals_timm(block, x):
    """What the suite relies on: the helper (looked up at call time) equals timm's attention."""
    with torch.no_grad():
        steps = attention_by_hand.self_attention_by_hand(block, x)
        assert_close(steps["out"], block.attn(block.norm1(x)))
        assert_close(steps["attn"], timm_attention_weights(block, x))


def with_dropped_qkv_bias(block, x, mistake=None):
    qkv = block.attn.qkv
    return REAL_ATTENTION(View(block, attn=View(block.attn, qkv=lambda t: F.linear(t, qkv.weight))), x, mistake)


def with_norm2_for_norm1(block, x, mistake=None):
    return REAL_ATTENTION(View(block, norm1=block.norm2), x, mistake)


def with_swapped_q_and_k(block, x, mistake=None):
    attn = block.attn
    D = x.shape[-1]

    def qkv(t):  # the q and k thirds of the output swapped
        out = attn.qkv(t)
        return torch.cat([out[..., D:2 * D], out[..., :D], out[..., 2 * D:]], dim=-1)
    return REAL_ATTENTION(View(block, attn=View(attn, qkv=qkv)), x, mistake)


REAL_ATTENTION = self_attention_by_hand


@pytest.mark.parametrize("bug", [with_norm2_for_norm1, with_dropped_qkv_bias, with_swapped_q_and_k])
def test_mutation_in_attention_by_hand_is_caught(tiny, z0, monkeypatch, bug):
    passes(check_attention_equals_timm, tiny.blocks[2], z0)
    monkeypatch.setattr(attention_by_hand, "self_attention_by_hand", bug)
    fails(check_attention_equals_timm, tiny.blocks[2], z0)


GRID = (3, 5)  # not square, so a transposed grid cannot land on the same cells
PREFIX = 1
# head h puts all the weight of query patch (1, 3) on key patch PEAKS[h]; other queries elsewhere
PEAKS = [(0, 4), (2, 1), (1, 0)]


def hand_made_attention() -> torch.Tensor:
    """(1, H, N, N) with one known peak per row; the query rows of (1, 3) and its neighbours differ."""
    gh, gw = GRID
    N = PREFIX + gh * gw
    attention = torch.zeros(1, len(PEAKS), N, N)
    for head in range(len(PEAKS)):
        for row in range(N):
            attention[0, head, row, (row * 7 + head) % N] = 1.0  # a different key for every query
    query = PREFIX + 1 * gw + 3  # by hand: the check itself goes through token_index
    for head, (row, col) in enumerate(PEAKS):
        attention[0, head, query] = 0.0
        attention[0, head, query, PREFIX + row * gw + col] = 1.0
    return attention


def check_query_map_places_the_peak():
    """The map of query patch (1, 3) is row `query` of A, each head's peak at its own cell, all else 0."""
    attention = hand_made_attention()
    query = model_info.token_index(1, 3, GRID, PREFIX)
    maps = attention_by_hand.query_attention_maps(attention, GRID, PREFIX, query)  # (H, gh, gw)
    assert maps.shape == (len(PEAKS), *GRID)
    for head, peak in enumerate(PEAKS):
        for cell in [(r, c) for r in range(GRID[0]) for c in range(GRID[1])]:
            assert float(maps[head][cell]) == (1.0 if cell == peak else 0.0), f"head {head}, cell {cell}"


def transposed_tokens_to_grid(values, grid, num_prefix_tokens):
    gh, gw = grid
    return values[..., num_prefix_tokens:].reshape(*values.shape[:-1], gw, gh).transpose(-1, -2)


def query_one_too_far(attention, grid, num_prefix_tokens, query, image=0):
    return REAL_QUERY_MAPS(attention, grid, num_prefix_tokens, query + 1, image)


def query_column_not_row(attention, grid, num_prefix_tokens, query, image=0):
    return REAL_QUERY_MAPS(attention.transpose(-1, -2), grid, num_prefix_tokens, query, image)


REAL_QUERY_MAPS = query_attention_maps


@pytest.mark.parametrize("target, name, bug", [
    (attention_by_hand, "tokens_to_grid", transposed_tokens_to_grid),
    (attention_by_hand, "query_attention_maps", query_one_too_far),
    (attention_by_hand, "query_attention_maps", query_column_not_row),
    (model_info, "token_index", lambda row, col, grid, prefix: row * grid[1] + col),  # prefix forgotten
    (model_info, "token_index", lambda row, col, grid, prefix: prefix + col * grid[0] + row),  # column-major
], ids=["transposed grid", "query index + 1", "column of A", "prefix forgotten", "column-major index"])
def test_mutation_in_query_maps_is_caught(monkeypatch, target, name, bug):
    passes(check_query_map_places_the_peak)
    monkeypatch.setattr(target, name, bug)
    fails(check_query_map_places_the_peak)
