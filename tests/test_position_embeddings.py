"""Notebook 02 helpers: class token, position embeddings, their similarity grid and interpolation."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vit_inspect import (VitInspectError, create_untrained, data_config_of, model_at_resolution,
                         neighbour_similarity_stats, patch_pos_embed, pos_embed_similarity, resample_pos_embed,
                         tokens_with_position)
from vit_inspect import position_embeddings

from .mutation import fails, passes


def test_similarity_is_the_exact_cosine_between_patch_embeddings(tiny):
    similarity = pos_embed_similarity(tiny)
    assert similarity.shape == (14, 14, 14, 14)
    pos = tiny.pos_embed.detach()[0]  # (197, D): class token at 0
    for (r, c), (r2, c2) in [((0, 0), (0, 1)), ((3, 5), (13, 2)), ((7, 7), (7, 7))]:
        expected = F.cosine_similarity(pos[1 + r * 14 + c], pos[1 + r2 * 14 + c2], dim=0)
        assert_close(similarity[r, c, r2, c2], expected)
    flat = similarity.reshape(196, 196)
    assert_close(flat, flat.T)
    assert_close(flat.diagonal(), torch.ones(196))


def test_keeping_the_class_token_shifts_every_tile(tiny):
    pos = tiny.pos_embed.detach()[0]
    unit = F.normalize(pos[:196], dim=-1)  # the mistake: rows 0..195 include the class token
    assert_close(patch_pos_embed(tiny), pos[1:], rtol=0, atol=0)
    with pytest.raises(AssertionError):
        assert_close(pos_embed_similarity(tiny), (unit @ unit.T).reshape(14, 14, 14, 14))


def _similarity_from_distance(gh: int, gw: int, row_bonus: float = 0.0) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    d_row = (rows.reshape(-1, 1) - rows.reshape(1, -1)).abs().float()
    d_col = (cols.reshape(-1, 1) - cols.reshape(1, -1)).abs().float()
    similarity = torch.exp(-(d_row + d_col) / 2) + row_bonus * ((d_row == 0) | (d_col == 0)).float()
    return similarity.reshape(gh, gw, gh, gw)


def test_stats_on_a_grid_with_known_structure():
    similarity = _similarity_from_distance(6, 6, row_bonus=0.3)
    stats = neighbour_similarity_stats(similarity)
    assert_close(stats["neighbours"], torch.tensor(float(torch.exp(torch.tensor(-0.5)) + 0.3)))
    flat = similarity.reshape(36, 36)
    far = [flat[a, b] for a in range(36) for b in range(36)
           if ((a // 6 - b // 6) ** 2 + (a % 6 - b % 6) ** 2) ** 0.5 >= 3]
    assert_close(stats["far"], torch.stack(far).mean())
    assert stats["neighbours_minus_far"] > 0.5
    assert stats["same_line_minus_other"] > 0.3


def test_stats_see_no_structure_in_random_embeddings(tiny):
    stats = neighbour_similarity_stats(pos_embed_similarity(tiny))
    assert abs(float(stats["neighbours_minus_far"])) < 0.05
    assert abs(float(stats["same_line_minus_other"])) < 0.05


def test_stats_reject_a_flat_matrix():
    with pytest.raises(VitInspectError, match="gh, gw, gh, gw"):
        neighbour_similarity_stats(torch.zeros(196, 196))


def test_z0_by_hand_equals_timm_pos_embed(tiny):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        patches = tiny.patch_embed(images)
        z0 = tokens_with_position(tiny, patches)
        assert z0.shape == (2, 197, 192)
        assert_close(z0, tiny._pos_embed(patches))
        assert_close(z0[:, 0], (tiny.cls_token[0] + tiny.pos_embed[:, 0]).expand(2, -1))


def test_adding_positions_before_the_class_token_is_off_by_one(tiny):
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        patches = tiny.patch_embed(images)
        wrong = torch.cat([tiny.cls_token, patches + tiny.pos_embed[:, :196]], dim=1)
        with pytest.raises(AssertionError):
            assert_close(wrong, tiny._pos_embed(patches))


def test_resampled_grid_is_a_bicubic_interpolation_of_the_old_one(tiny):
    resampled = resample_pos_embed(tiny, (24, 24))
    assert resampled.shape == (1, 1 + 24 * 24, 192)
    pos = tiny.pos_embed.detach()
    assert_close(resampled[:, 0], pos[:, 0], rtol=0, atol=0)
    grid = pos[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)  # (1, D, 14, 14)
    by_hand = F.interpolate(grid, size=(24, 24), mode="bicubic", antialias=True)  # (1, D, 24, 24)
    assert_close(resampled[:, 1:], by_hand.permute(0, 2, 3, 1).reshape(1, 576, 192))
    assert_close(resample_pos_embed(tiny, (14, 14)), pos, rtol=0, atol=0)


def test_model_at_384_runs_on_the_larger_image(tiny):
    before = torch.random.get_rng_state()
    bigger = model_at_resolution(tiny, 384)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert bigger.pos_embed.shape == (1, 577, 192)
    assert data_config_of(bigger) == {**data_config_of(tiny), "input_size": (3, 384, 384)}
    assert_close(bigger.pos_embed.detach(), resample_pos_embed(tiny, (24, 24)), rtol=0, atol=0)
    assert_close(bigger.blocks[0].attn.qkv.weight, tiny.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    images = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert bigger(images).shape == (1, 1000)
        patches = bigger.patch_embed(images)
        assert_close(tokens_with_position(bigger, patches), bigger._pos_embed(patches))
        with pytest.raises(AssertionError):  # the 224 model refuses the larger input
            tiny(images)


def test_model_at_resolution_rejects_a_size_off_the_patch_grid(tiny):
    with pytest.raises(VitInspectError, match="multiple of the patch size"):
        model_at_resolution(tiny, 390)


# options that own no parameters (pooling, fc_norm), and options that do (registers, no class token,
# prefix tokens without position embedding, qk-norm, layer scale): each must survive the resize
RESIZE_CASES = {
    "avg_pool_no_fc_norm": ("vit_small_patch16_224", {"global_pool": "avg", "fc_norm": False}),
    "avg_pool_fc_norm": ("vit_tiny_patch16_224", {"global_pool": "avg", "fc_norm": True}),
    "registers_no_embed_class": ("vit_tiny_patch16_224", {"reg_tokens": 4, "no_embed_class": True}),
    "no_class_token": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "qk_norm_layer_scale": ("vit_tiny_patch16_224", {"qk_norm": True, "init_values": 0.1}),
    "patch32_head_10": ("vit_base_patch32_224", {"num_classes": 10, "depth": 2}),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES), ids=list(RESIZE_CASES))
def test_model_at_resolution_keeps_every_option_and_equals_timm_dynamic_size(case):
    name, options = RESIZE_CASES[case]
    model = create_untrained(name, seed=5, **options)
    with torch.no_grad():  # no option may hide behind timm's zero/one init
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    dynamic = create_untrained(name, seed=6, dynamic_img_size=True, **options)
    dynamic.load_state_dict(model.state_dict())
    bigger = model_at_resolution(model, 384)
    assert (bigger.global_pool, bigger.num_prefix_tokens, bigger.num_classes) == \
        (model.global_pool, model.num_prefix_tokens, model.num_classes)
    assert model.patch_embed.img_size == (224, 224), "the original model must stay as it was"
    images = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert_close(bigger(images), dynamic(images), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- mutation tests

def check_z0_equals_timm(model, patches):
    with torch.no_grad():
        assert_close(position_embeddings.tokens_with_position(model, patches), model._pos_embed(patches))


def test_mutation_zeroed_class_token_is_caught(tiny, monkeypatch):
    with torch.no_grad():
        patches = tiny.patch_embed(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(8)))
    passes(check_z0_equals_timm, tiny, patches)
    real = position_embeddings.prefix_tokens
    monkeypatch.setattr(position_embeddings, "prefix_tokens",
                        lambda model, batch: [torch.zeros_like(t) for t in real(model, batch)])
    fails(check_z0_equals_timm, tiny, patches)
