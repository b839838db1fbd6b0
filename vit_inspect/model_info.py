"""Small facts about a timm ViT that every step needs: patch size, grid, prefix tokens."""
from __future__ import annotations

import torch
from torch import nn


def patch_size_of(model: nn.Module) -> int:
    """Side of a square patch in pixels (16 for ViT-B/16)."""
    return int(model.patch_embed.patch_size[0])


def grid_size_of(model: nn.Module, image: torch.Tensor | None = None) -> tuple[int, int]:
    """(rows, cols) of the patch grid: the model's own, or that of ``image`` (B, 3, H, W)."""
    if image is None:
        return tuple(int(s) for s in model.patch_embed.grid_size)
    p = patch_size_of(model)
    return image.shape[-2] // p, image.shape[-1] // p


def num_prefix_tokens_of(model: nn.Module) -> int:
    """Tokens before the patches: class token, distillation token, registers."""
    return int(getattr(model, "num_prefix_tokens", 1))
