"""Notebook 01 helpers: patches and the patch embedding, checked against timm's Conv2d."""
import copy

import pytest
import torch
from torch.testing import assert_close

from vit_inspect import (FLATTEN_ORDERS, VitInspectError, create_untrained, filter_components, filter_variance,
                         patch_embed_by_hand, patch_embed_filter_components, patch_embed_filter_variance,
                         patch_embedding_matrix, patchify, patchify_einops, preprocess, sample_images)
from vit_inspect import patches as patches_module

from .mutation import fails, passes


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("order", FLATTEN_ORDERS)
def test_reshape_and_einops_patchify_agree(images, order):
    patches = patchify(images, 16, order)
    assert patches.shape == (2, 196, 768)
    assert_close(patchify_einops(images, 16, order), patches, rtol=0, atol=0)


def test_patches_run_row_by_row_from_the_top_left(images):
    patches = patchify(images, 16, "c s1 s2")
    assert_close(patches[:, 0], images[:, :, :16, :16].reshape(2, -1), rtol=0, atol=0)
    assert_close(patches[:, 1], images[:, :, :16, 16:32].reshape(2, -1), rtol=0, atol=0)
    assert_close(patches[:, 14], images[:, :, 16:32, :16].reshape(2, -1), rtol=0, atol=0)
    channels_last = patchify(images, 16, "s1 s2 c")
    assert_close(channels_last[:, 0], images[:, :, :16, :16].permute(0, 2, 3, 1).reshape(2, -1), rtol=0, atol=0)


@pytest.mark.parametrize("use_einops", [False, True])
@pytest.mark.parametrize("order", FLATTEN_ORDERS)
def test_patch_embedding_by_hand_equals_the_conv(tiny, images, order, use_einops):
    with torch.no_grad():
        expected = tiny.patch_embed(images)
        got = patch_embed_by_hand(tiny, images, order, use_einops=use_einops)
    assert got.shape == (2, 196, 192)
    assert_close(got, expected)


def test_patch_embedding_by_hand_on_vit_base_and_a_real_image():
    model = create_untrained("vit_base_patch16_224")
    x = preprocess(sample_images()[0], model).tensor
    assert patch_embedding_matrix(model).shape == (768, 768)
    with torch.no_grad():
        assert_close(patch_embed_by_hand(model, x), model.patch_embed(x))


@pytest.mark.parametrize("order, matrix_order", [("s1 s2 c", "c s1 s2"), ("c s1 s2", "s1 s2 c")])
def test_mixing_flattening_orders_does_not_match_the_conv(tiny, images, order, matrix_order):
    with torch.no_grad():
        wrong = patch_embed_by_hand(tiny, images, order, matrix_order=matrix_order)
        expected = tiny.patch_embed(images)
    with pytest.raises(AssertionError):
        assert_close(wrong, expected)


def test_the_conv_weight_flattens_as_c_s1_s2(tiny):
    weight = tiny.patch_embed.proj.weight.detach()  # (D, C, p, p)
    assert_close(patch_embedding_matrix(tiny, "c s1 s2"), weight.reshape(weight.shape[0], -1).T, rtol=0, atol=0)
    with pytest.raises(AssertionError):
        assert_close(patch_embedding_matrix(tiny, "s1 s2 c"), weight.reshape(weight.shape[0], -1).T)


def test_bad_order_or_size_is_a_one_line_error(images):
    with pytest.raises(VitInspectError, match="flattening order"):
        patchify(images, 16, "s1 c s2")
    with pytest.raises(VitInspectError, match="not divisible"):
        patchify_einops(images[..., :200], 16)


def test_filter_components_are_the_covariance_eigenvectors(tiny):
    components = patch_embed_filter_components(tiny, k=28)
    assert components.shape == (28, 3, 16, 16)
    flat = components.reshape(28, -1)
    assert_close(flat @ flat.T, torch.eye(28), atol=1e-5, rtol=0)
    filters = tiny.patch_embed.proj.weight.detach().reshape(192, -1).double()
    centred = filters - filters.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    top = eigenvectors[:, -1].float()
    assert_close((flat[0] @ top).abs(), torch.tensor(1.0), atol=1e-4, rtol=0)
    variance = patch_embed_filter_variance(tiny)
    assert_close(variance.sum(), torch.tensor(1.0))
    assert bool((variance[:-1] >= variance[1:]).all())
    assert_close(variance[0].double(), eigenvalues[-1] / eigenvalues.clamp(min=0).sum(), atol=1e-5, rtol=1e-4)


def check_centring(weight):
    """PCA centres the filters: a pattern added to every filter changes neither the shares nor the components."""
    offset = weight + 0.3 * torch.randn(1, *weight.shape[1:], generator=torch.Generator().manual_seed(9))
    assert_close(patches_module.filter_variance(offset), patches_module.filter_variance(weight), atol=1e-6, rtol=1e-4)
    assert_close(patches_module.filter_components(offset, 4).abs(), patches_module.filter_components(weight, 4).abs(),
                 atol=1e-3, rtol=0)


def test_components_ignore_an_offset_shared_by_all_filters(tiny):
    check_centring(tiny.patch_embed.proj.weight.detach())
    assert_close(patch_embed_filter_variance(tiny), filter_variance(tiny.patch_embed.proj.weight), rtol=0, atol=0)
    assert_close(patch_embed_filter_components(tiny, 5), filter_components(tiny.patch_embed.proj.weight, 5),
                 rtol=0, atol=0)


def test_mutation_uncentred_pca_is_caught(tiny, monkeypatch):
    weight = tiny.patch_embed.proj.weight.detach()
    passes(check_centring, weight)
    monkeypatch.setattr(patches_module, "centred_filters", lambda w: w.detach().float().reshape(w.shape[0], -1))
    fails(check_centring, weight)


def test_too_many_components_is_an_error(tiny):
    with pytest.raises(VitInspectError, match="k="):
        patch_embed_filter_components(tiny, k=0)
