"""Notebook 02_position_embeddings: the class token and the learned position embeddings.

z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos. The paper's Fig. 7 (centre) shows, for
every patch position, the cosine similarity of its embedding with all the others.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from .errors import VitInspectError
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of


def _pos_embed_has_prefix(model: nn.Module) -> bool:
    # DeiT-3 style models (no_embed_class) keep no position embedding for prefix tokens
    return not getattr(model, "no_embed_class", False)


def patch_pos_embed(model: nn.Module) -> torch.Tensor:
    """The position embeddings of the patches only, prefix tokens dropped: (gh*gw, D)."""
    if getattr(model, "pos_embed", None) is None:
        raise VitInspectError(f"{type(model).__name__} has no learned absolute position embedding")
    start = num_prefix_tokens_of(model) if _pos_embed_has_prefix(model) else 0
    return model.pos_embed.detach()[0, start:]  # (gh*gw, D)


def pos_embed_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between every pair of patch position embeddings: (gh, gw, gh, gw).

    ``similarity[r, c]`` is the (gh, gw) tile of patch (r, c): its similarity to every patch.
    """
    gh, gw = grid_size_of(model)
    unit = F.normalize(patch_pos_embed(model).double(), dim=-1)  # (gh*gw, D)
    similarity = (unit @ unit.T).clamp(-1, 1)  # (gh*gw, gh*gw)
    return similarity.float().reshape(gh, gw, gh, gw)  # (gh, gw, gh, gw)


def _grid_masks(gh: int, gw: int, far: float) -> dict[str, torch.Tensor]:
    """Boolean (gh*gw, gh*gw) masks of pairs of distinct patches, by relation."""
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # (gh*gw,)
    d_row = (rows[:, None] - rows[None, :]).abs()  # (gh*gw, gh*gw)
    d_col = (cols[:, None] - cols[None, :]).abs()  # (gh*gw, gh*gw)
    distinct = (d_row + d_col) > 0
    same_line = distinct & ((d_row == 0) | (d_col == 0))
    return {
        "neighbours": (d_row + d_col) == 1,
        "far": (d_row.float().square() + d_col.float().square()).sqrt() >= far,
        "same_row_or_column": same_line,
        "other_row_and_column": distinct & ~same_line,
    }


def neighbour_similarity_stats(similarity: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean similarity of a patch to groups of other patches (0-dim tensors).

    Keys: "neighbours" (the 4 adjacent patches), "far" (at least half the grid side
    away), "same_row_or_column", "other_row_and_column", and the two gaps
    "neighbours_minus_far", "same_line_minus_other". A learned 2-D layout gives
    clearly positive gaps; random embeddings give gaps near 0.
    """
    gh, gw = similarity.shape[:2]
    if similarity.shape != (gh, gw, gh, gw):
        raise VitInspectError(f"similarity must have shape (gh, gw, gh, gw), got {tuple(similarity.shape)}")
    flat = similarity.reshape(gh * gw, gh * gw)  # (gh*gw, gh*gw)
    stats = {name: flat[mask].mean() for name, mask in _grid_masks(gh, gw, max(gh, gw) / 2).items()}
    stats["neighbours_minus_far"] = stats["neighbours"] - stats["far"]
    stats["same_line_minus_other"] = stats["same_row_or_column"] - stats["other_row_and_column"]
    return stats


def prefix_tokens(model: nn.Module, batch: int) -> list[torch.Tensor]:
    """The learned tokens put before the patches (class token, registers), each (B, n, D)."""
    tokens = [getattr(model, "cls_token", None), getattr(model, "reg_token", None)]
    return [t.expand(batch, -1, -1) for t in tokens if t is not None]


def tokens_with_position(model: nn.Module, patch_tokens: torch.Tensor) -> torch.Tensor:
    """z0 = cat(class token, patch tokens) + pos_embed by hand: (B, N, D) with N = prefix + patches.

    ``patch_tokens`` is (B, gh*gw, D), e.g. from ``model.patch_embed``. Equal to timm's
    ``model._pos_embed`` (eval mode, so without its dropout).
    """
    B = patch_tokens.shape[0]
    if _pos_embed_has_prefix(model):
        tokens = torch.cat(prefix_tokens(model, B) + [patch_tokens], dim=1)  # (B, N, D)
        return tokens + model.pos_embed  # (B, N, D)
    return torch.cat(prefix_tokens(model, B) + [patch_tokens + model.pos_embed], dim=1)  # (B, N, D)


def resample_pos_embed(model: nn.Module, new_grid: tuple[int, int]) -> torch.Tensor:
    """The position embeddings interpolated (bicubic) to a (gh', gw') grid: (1, prefix + gh'*gw', D).

    The prefix tokens' embeddings are kept as they are; only the patch grid is resized.
    """
    prefix = num_prefix_tokens_of(model) if _pos_embed_has_prefix(model) else 0
    return resample_abs_pos_embed(model.pos_embed.detach(), new_size=list(new_grid),
                                  old_size=list(grid_size_of(model)), num_prefix_tokens=prefix)


def model_at_resolution(model: nn.Module, img_size: int) -> nn.Module:
    """A copy of ``model`` for ``img_size`` x ``img_size`` inputs (eval mode); ``model`` is untouched.

    Same weights and options (pooling, norms, prefix tokens, ...), except ``pos_embed``,
    which timm's ``set_input_size`` interpolates (bicubic) to the larger grid: how ViTs
    are fine-tuned at a higher resolution with the same patch size.
    """
    if not hasattr(model, "set_input_size") or getattr(model, "pos_embed", None) is None:
        raise VitInspectError(f"{type(model).__name__} is not a timm ViT with a learned position embedding")
    patch = patch_size_of(model)
    if img_size % patch:
        raise VitInspectError(f"img_size {img_size} is not a multiple of the patch size {patch}")
    bigger = copy.deepcopy(model).eval()
    bigger.set_input_size(img_size=(img_size, img_size))
    # same normalisation and crop ratio; only the input size in the data config changes
    bigger.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "input_size": (3, img_size, img_size)}
    return bigger
