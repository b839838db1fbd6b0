"""Notebook 06_attention_maps: the paper's attention analyses from captured attention weights.

Attention rollout (Abnar & Zuidema 2020; ViT paper Fig. 6) and mean attention
distance (ViT paper Fig. 7 right), batched and vectorised; plus streaming averages of
the distance over many images. The weights themselves come from ``recorder.capture``.
A sanity check for the maps: how much of a rollout map the mere brightness of the
patches explains (:func:`patch_brightness`, :func:`map_correlation`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from .errors import VitInspectError
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of, tokens_to_grid
from .recorder import capture

if TYPE_CHECKING:
    from tqdm import tqdm

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(..., H, N, N) -> (..., N, N): mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(dim=-3)
    if head_fusion == "max":
        return attention.amax(dim=-3)
    if head_fusion == "min":
        return attention.amin(dim=-3)
    raise VitInspectError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the ``discard_ratio`` fraction of smallest entries of each (N, N) map.

    (M, N, N) -> (M, N, N), one map per image and layer; the input itself is never modified.
    """
    M, N, _ = fused.shape
    count = int(N * N * discard_ratio)
    if count == 0:
        return fused
    flat = fused.reshape(M, N * N).clone()  # (M, N*N)
    lowest = flat.topk(count, dim=-1, largest=False).indices  # (M, count)
    return flat.scatter_(-1, lowest, 0.0).view(M, N, N)  # (M, N, N)


def attention_rollout(attention: torch.Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout of (B, L, H, N, N) captured attention -> (B, N, N).

    At every layer: fuse the heads, optionally discard the weakest links, add the
    identity for the residual connection and renormalise each row to sum to 1; then
    multiply the layers, later layers on the left: R = A_L ... A_1. Row i of R says how
    much output token i draws on each input token.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise VitInspectError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    B, L, H, N, _ = attention.shape
    fused = fuse_heads(attention, head_fusion).reshape(B * L, N, N)  # (B*L, N, N)
    fused = discard_lowest(fused, discard_ratio).view(B, L, N, N)  # (B, L, N, N)
    mixed = fused + torch.eye(N, dtype=attention.dtype, device=attention.device)  # (B, L, N, N)
    mixed = mixed / mixed.sum(dim=-1, keepdim=True)
    rollout = mixed[:, 0]  # (B, N, N)
    for layer in range(1, L):
        rollout = mixed[:, layer] @ rollout  # (B, N, N)
    return rollout


def rollout_to_grid(rollout: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                    query: int = 0) -> torch.Tensor:
    """Row ``query`` of (B, N, N) rollout (default the class token) over the patch tokens -> (B, gh, gw)."""
    return tokens_to_grid(rollout[:, query], grid, num_prefix_tokens)  # (B, gh, gw)


def patch_brightness(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean brightness of every patch of (B, C, H, W) pixels in [0, 1] (all channels alike): (B, gh, gw).

    Laid out like the patch tokens, so it compares cell by cell with a rollout map.
    """
    B, C, H, W = pixels.shape
    p = patch_size
    patches = pixels.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
    return patches.mean(dim=(1, 3, 5))  # (B, gh, gw)


def map_correlation(maps: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two (B, gh, gw) maps over their cells, one per image: (B,).

    +1: one map is an increasing linear function of the other; 0: no linear relation.
    """
    a = maps.flatten(1) - maps.flatten(1).mean(dim=1, keepdim=True)  # (B, gh*gw)
    b = other.flatten(1) - other.flatten(1).mean(dim=1, keepdim=True)  # (B, gh*gw)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)


def grid_argmax(maps: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) -> (B, 2): [row, col] of each map's largest cell."""
    B, gh, gw = maps.shape
    flat = maps.reshape(B, gh * gw).argmax(dim=-1)  # (B,)
    return torch.stack([flat // gw, flat % gw], dim=-1)  # (B, 2)


def patch_centres(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(P, 2) pixel coordinates (y, x) of the patch centres, row-major like the tokens."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # (gh, gw)
    centres = torch.stack([rows, cols], dim=-1).reshape(gh * gw, 2)  # (P, 2)
    return (centres.double() + 0.5) * patch_size


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(P, P) Euclidean distance in pixels between every pair of patch centres."""
    centres = patch_centres(grid, patch_size)  # (P, 2)
    return torch.cdist(centres, centres)  # (P, P)


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                            patch_size: int) -> torch.Tensor:
    """Attention-weighted pixel distance between query and key patches: (..., H, N, N) -> (..., H).

    Typically (B, L, H, N, N) -> (B, L, H). Prefix tokens (class, distillation,
    registers) have no place on the image, so they are dropped both as queries and as
    keys, and each patch query's attention is renormalised over the patch keys before
    weighting the distances; the result is the mean over the patch queries.
    """
    p = num_prefix_tokens
    distances = patch_distances(grid, patch_size).to(attention.device, attention.dtype)  # (P, P)
    patch_attention = attention[..., p:, p:]  # (..., H, P, P)
    if patch_attention.shape[-1] != distances.shape[-1]:
        raise VitInspectError(f"{attention.shape[-1]} tokens do not match {p} prefix + "
                              f"{grid[0]}x{grid[1]} patches")
    # one pass over the attention gives both sums, without an (..., P, P) temporary
    distances_and_ones = torch.stack([distances, torch.ones_like(distances)], dim=-1)  # (P, P, 2)
    sums = torch.einsum("...qk,qkc->...qc", patch_attention, distances_and_ones)  # (..., H, P, 2)
    mass = sums[..., 1].clamp_min(torch.finfo(attention.dtype).tiny)  # (..., H, P), patch-key mass
    return (sums[..., 0] / mass).mean(dim=-1)


def uniform_attention_distance(grid: tuple[int, int], patch_size: int) -> float:
    """Mean attention distance of uniform attention: the mean distance over all patch pairs.

    The level that random (untrained) weights give at every layer.
    """
    return float(patch_distances(grid, patch_size).mean())


def reusable(buffer: torch.Tensor | None, batch: int, tokens: int) -> torch.Tensor | None:
    """The leading ``batch`` rows of an earlier (B, L, H, N, N) output if they fit, else None.

    Streaming loops write every batch into the first batch's output: a fresh output
    would pay a page fault per 4 KiB again and again.
    """
    if buffer is None or batch > buffer.shape[0] or buffer.shape[-1] != tokens:
        return None
    return buffer[:batch]


def average_attention_distance(model: nn.Module, batches: Iterable[torch.Tensor],
                               progress: tqdm | None = None) -> torch.Tensor:
    """Mean attention distance per layer and head over all images of ``batches``: (L, H).

    Streams: one batch's attention is held at a time. ``progress`` (a tqdm bar) is
    advanced by the number of images in each batch.
    """
    total, count, buffer = None, 0, None
    for images in batches:
        grid = grid_size_of(model, images)
        reuse = reusable(buffer, images.shape[0], num_prefix_tokens_of(model) + grid[0] * grid[1])
        attention = capture(model, images, attention_out=reuse)["attention"]  # (B, L, H, N, N)
        buffer = attention if reuse is None else buffer
        distance = mean_attention_distance(attention, grid, num_prefix_tokens_of(model),
                                           patch_size_of(model))  # (B, L, H)
        total = distance.sum(dim=0) if total is None else total + distance.sum(dim=0)
        count += images.shape[0]
        if progress is not None:
            progress.update(images.shape[0])
    if total is None:
        raise VitInspectError("no images to average over")
    return total / count
