"""Notebook 05_classification_head: the classification head by hand: final norm -> class token -> linear -> softmax.

ViT-B/16 classifies from the class token alone (y = LN(z_L^0)); mean pooling is shown
as the alternative that some from-scratch courses used.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder_stack import final_norm_by_hand, linear_by_hand, run_blocks_one_at_a_time
from .errors import VitInspectError
from .model_info import num_prefix_tokens_of

POOLINGS = {
    "token": "the class token (what ViT-B/16 was trained with)",
    "avg": "mean of the patch tokens (timm's global_pool='avg')",
    "avg_all": "mean of all tokens, class token included (a course's from-scratch head)",
}


def pool_tokens(tokens: torch.Tensor, num_prefix_tokens: int, pool: str = "token") -> torch.Tensor:
    """One vector per image from normed tokens (B, N, D): (B, D). ``pool`` is a key of POOLINGS."""
    if pool == "token":
        return tokens[:, 0]  # (B, D)
    if pool == "avg":
        return tokens[:, num_prefix_tokens:].mean(dim=1)  # (B, D)
    if pool == "avg_all":
        return tokens.mean(dim=1)  # (B, D)
    raise VitInspectError(f"unknown pooling {pool!r}; choose from {', '.join(POOLINGS)}")


def head_by_hand(model: nn.Module, stream: torch.Tensor, pool: str = "token") -> dict[str, torch.Tensor]:
    """Final norm -> pooling -> head on the residual stream after the last block (B, N, D).

    Returns normed (B, N, D), pooled (B, D), logits (B, C), probs (B, C). With
    ``pool="token"`` the logits equal ``model.forward_head(model.norm(stream))``.
    """
    normed = final_norm_by_hand(model, stream)  # (B, N, D)
    pooled = model.fc_norm(pool_tokens(normed, num_prefix_tokens_of(model), pool))  # (B, D)
    logits = linear_by_hand(model.head, pooled)  # (B, C)
    return {"normed": normed, "pooled": pooled, "logits": logits, "probs": logits.softmax(dim=-1)}


def classify_by_hand(model: nn.Module, images: torch.Tensor, pool: str = "token") -> dict[str, torch.Tensor]:
    """Images (B, 3, H, W) -> blocks one at a time -> :func:`head_by_hand`; same keys.

    With ``pool="token"`` the logits (B, C) equal ``model(images)``.
    """
    stream = run_blocks_one_at_a_time(model, images)["stream"][-1]  # (B, N, D)
    return head_by_hand(model, stream, pool)
