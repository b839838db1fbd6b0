"""Notebook 01_patches: cutting the image into patches and embedding them by hand.

timm's ``patch_embed.proj`` is a Conv2d with kernel = stride = patch size. It is the same
as cutting non-overlapping patches, flattening each one and multiplying by a matrix E,
provided the patch is flattened in the same order as the conv weight (D, C, p, p):
channel first, then row, then column, "c s1 s2".
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .errors import VitInspectError
from .model_info import patch_size_of

FLATTEN_ORDERS = ("c s1 s2", "s1 s2 c")


def _check_order(order: str) -> None:
    if order not in FLATTEN_ORDERS:
        raise VitInspectError(f"flattening order {order!r} is not one of {', '.join(FLATTEN_ORDERS)}")


def _check_divisible(images: torch.Tensor, patch_size: int) -> None:
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise VitInspectError(f"image {height}x{width} is not divisible into {patch_size}px patches")


def patchify(images: torch.Tensor, patch_size: int, order: str = "c s1 s2") -> torch.Tensor:
    """Cut (B, C, H, W) into patches with reshape/permute: (B, N, C*p*p), rows first.

    ``order`` is how each patch is flattened: "c s1 s2" (matches the conv weight) or
    "s1 s2 c" (the from-scratch courses' einops pattern).
    """
    _check_order(order)
    _check_divisible(images, patch_size)
    B, C, H, W = images.shape
    p = patch_size
    grid = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, s1, gw, s2)
    if order == "c s1 s2":
        patches = grid.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, s1, s2)
    else:
        patches = grid.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, s1, s2, C)
    return patches.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)


def patchify_einops(images: torch.Tensor, patch_size: int, order: str = "c s1 s2") -> torch.Tensor:
    """The same as :func:`patchify`, written with einops ``rearrange``: (B, N, C*p*p)."""
    _check_order(order)
    _check_divisible(images, patch_size)
    pattern = f"b c (h s1) (w s2) -> b (h w) ({order})"
    return rearrange(images, pattern, s1=patch_size, s2=patch_size)  # (B, N, C*p*p)


def patch_embedding_matrix(model: nn.Module, order: str = "c s1 s2") -> torch.Tensor:
    """E from the conv weight, rows flattened in ``order``: (C*p*p, D)."""
    _check_order(order)
    weight = model.patch_embed.proj.weight.detach()  # (D, C, p, p)
    D = weight.shape[0]
    if order == "s1 s2 c":
        weight = weight.permute(0, 2, 3, 1)  # (D, p, p, C)
    return weight.reshape(D, -1).T  # (C*p*p, D)


def patch_embed_by_hand(model: nn.Module, images: torch.Tensor, order: str = "c s1 s2",
                        matrix_order: str | None = None, use_einops: bool = False) -> torch.Tensor:
    """Patch tokens as patches @ E + bias: (B, N, D), equal to ``model.patch_embed(images)``.

    ``matrix_order`` (default: ``order``) flattens E; a different one than ``order``
    reproduces the mistake of mixing the two conventions.
    """
    cut = patchify_einops if use_einops else patchify
    patches = cut(images, patch_size_of(model), order)  # (B, N, C*p*p)
    E = patch_embedding_matrix(model, matrix_order or order)  # (C*p*p, D)
    tokens = patches @ E  # (B, N, D)
    bias = model.patch_embed.proj.bias
    tokens = tokens if bias is None else tokens + bias.detach()
    return model.patch_embed.norm(tokens)


def centred_filters(weight: torch.Tensor) -> torch.Tensor:
    """Conv filters (D, C, p, p) as D samples of C*p*p numbers, minus their mean filter: (D, C*p*p)."""
    filters = weight.detach().float().reshape(weight.shape[0], -1)  # (D, C*p*p)
    return filters - filters.mean(dim=0, keepdim=True)


def filter_components(weight: torch.Tensor, k: int = 28) -> torch.Tensor:
    """The first ``k`` principal components of conv filters (D, C, p, p): (k, C, p, p).

    Each filter is one sample; the filters are centred first, so a pattern shared by all
    of them (their mean) is not a component. Components are orthonormal, strongest first.
    """
    D, C, p, _ = weight.shape
    if not 1 <= k <= min(D, C * p * p):
        raise VitInspectError(f"k={k}: must be between 1 and {min(D, C * p * p)}")
    _, _, Vh = torch.linalg.svd(centred_filters(weight), full_matrices=False)  # Vh: (C*p*p, C*p*p)
    return Vh[:k].reshape(k, C, p, p)  # (k, C, p, p)


def filter_variance(weight: torch.Tensor) -> torch.Tensor:
    """Share of the centred filters' variance along each principal component, strongest first: (C*p*p,)."""
    singular = torch.linalg.svdvals(centred_filters(weight))  # (min(D, C*p*p),)
    return singular.square() / singular.square().sum()


def patch_embed_filter_components(model: nn.Module, k: int = 28) -> torch.Tensor:
    """:func:`filter_components` of the model's patch-embedding conv: (k, C, p, p)."""
    return filter_components(model.patch_embed.proj.weight, k)


def patch_embed_filter_variance(model: nn.Module) -> torch.Tensor:
    """:func:`filter_variance` of the model's patch-embedding conv: (C*p*p,)."""
    return filter_variance(model.patch_embed.proj.weight)
