"""Facts about a timm ViT that every notebook needs: the pinned tag, patch size, grid, prefix tokens.

Also the one way a row over the tokens becomes a picture: :func:`tokens_to_grid`
drops the prefix tokens (class, distillation, registers - always first in timm) and
lays the patch tokens out row-major on the (gh, gw) grid. Every "attention over the
patches -> heatmap" in the package goes through it.

Imports no torch at module level, so the command line can use these names at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import VitInspectError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_MODEL = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


def patch_size_of(model: nn.Module) -> int:
    """Side of a square patch in pixels (16 for ViT-B/16)."""
    return int(model.patch_embed.patch_size[0])


def grid_size_of(model: nn.Module, images: torch.Tensor | None = None) -> tuple[int, int]:
    """(gh, gw) of the patch grid: the model's own, or that of ``images`` (B, 3, H, W)."""
    if images is None:
        return tuple(int(s) for s in model.patch_embed.grid_size)
    p = patch_size_of(model)
    return images.shape[-2] // p, images.shape[-1] // p


def num_prefix_tokens_of(model: nn.Module) -> int:
    """Tokens before the patches: class token, distillation token, registers."""
    return int(getattr(model, "num_prefix_tokens", 1))


def token_index(row: int, col: int, grid: tuple[int, int], num_prefix_tokens: int) -> int:
    """Position in the token sequence of patch (row, col), both 0-based; prefix tokens come first."""
    gh, gw = grid
    if not (0 <= row < gh and 0 <= col < gw):
        raise VitInspectError(f"patch (row {row}, col {col}) is outside the {gh}x{gw} grid "
                     f"(rows 0..{gh - 1}, columns 0..{gw - 1})")
    return num_prefix_tokens + row * gw + col


def tokens_to_grid(values: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """A value per token (..., N) -> one per patch (..., gh, gw): prefix tokens dropped, row-major."""
    gh, gw = grid
    N = values.shape[-1]
    if N != num_prefix_tokens + gh * gw:
        raise VitInspectError(f"{N} tokens do not match {num_prefix_tokens} prefix + {gh}x{gw} patches")
    return values[..., num_prefix_tokens:].reshape(*values.shape[:-1], gh, gw)  # (..., gh, gw)

