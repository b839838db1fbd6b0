"""Notebook 03_attention_by_hand: one block's multi-head self-attention by hand, and the course's mistakes.

Correct order: norm1 -> qkv linear -> split heads -> q k^T / sqrt(d) -> softmax -> A v
-> merge heads -> proj.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import VitInspectError
from .model_info import tokens_to_grid

MISTAKES = ("skip_norm1", "no_scale", "scale_by_sqrt_D", "no_softmax", "divide_after_softmax",
            "course_as_written")
MISTAKE_DESCRIPTIONS = {
    "skip_norm1": "qkv applied to z, skipping the block's LayerNorm (norm1)",
    "no_scale": "scores q k^T not scaled by 1/sqrt(d)",
    "scale_by_sqrt_D": "scores scaled by 1/sqrt(D) = 1/sqrt(768) instead of 1/sqrt(d) = 1/8",
    "no_softmax": "scaled scores used as weights, no softmax",
    "divide_after_softmax": "softmax(q k^T) divided by sqrt(D) after the softmax",
    "course_as_written": "raw q k^T of the un-normed tokens: no norm1, no scale, no softmax",
}
_SKIP_NORM1 = ("skip_norm1", "course_as_written")
_NO_SOFTMAX = ("no_softmax", "course_as_written")


def _check_mistake(mistake: str | None) -> None:
    if mistake is not None and mistake not in MISTAKES:
        raise VitInspectError(f"unknown attention mistake {mistake!r}; choose from {', '.join(MISTAKES)}")


def _score_scale(mistake: str | None, D: int, d: int) -> float:
    if mistake in ("no_scale", "divide_after_softmax", "course_as_written"):
        return 1.0
    if mistake == "scale_by_sqrt_D":
        return D ** -0.5  # the model width instead of the per-head width d
    return d ** -0.5


def _weights_from_scores(scores: torch.Tensor, mistake: str | None, D: int) -> torch.Tensor:
    if mistake in _NO_SOFTMAX:
        return scores
    weights = scores.softmax(dim=-1)
    if mistake == "divide_after_softmax":
        return weights / math.sqrt(D)
    return weights


def self_attention_by_hand(block: nn.Module, x: torch.Tensor, mistake: str | None = None) -> dict[str, torch.Tensor]:
    """Block ``block``'s attention branch on the residual stream ``x`` (B, N, D), by hand.

    Returns normed (B, N, D), qkv (B, N, 3D), q/k/v (B, H, N, d), scores (B, H, N, N)
    (already scaled), attn (B, H, N, N), merged (B, N, D) and out (B, N, D), where
    ``out`` equals timm's ``block.attn(block.norm1(x))``. ``mistake`` (one of
    :data:`MISTAKES`) reproduces a course mistake instead.
    """
    _check_mistake(mistake)
    attn = block.attn
    B, N, D = x.shape
    H, d = attn.num_heads, attn.head_dim
    normed = x if mistake in _SKIP_NORM1 else block.norm1(x)
    qkv = attn.qkv(normed)  # (B, N, 3*H*d)
    q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q @ k.transpose(-2, -1)) * _score_scale(mistake, D, d)  # (B, H, N, N)
    weights = _weights_from_scores(scores, mistake, D)  # (B, H, N, N)
    merged = (weights @ v).transpose(1, 2).reshape(B, N, H * d)  # (B, N, H*d)
    out = attn.proj(attn.norm(merged))  # (B, N, D)
    return {"normed": normed, "qkv": qkv, "q": q, "k": k, "v": v, "scores": scores,
            "attn": weights, "merged": merged, "out": out}


def mistake_errors(block: nn.Module, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """How far each mistake lands from the correct computation (0-dim tensors).

    ``{mistake: {"out": ||out_m - out|| / ||out||, "attn": max |A_m - A|}}``.
    """
    right = self_attention_by_hand(block, x)
    errors = {}
    for mistake in MISTAKES:
        wrong = self_attention_by_hand(block, x, mistake)
        errors[mistake] = {
            "out": (wrong["out"] - right["out"]).norm() / right["out"].norm(),
            "attn": (wrong["attn"] - right["attn"]).abs().max(),
        }
    return errors


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of every row of (..., N, N) attention weights: (..., N).

    log N for uniform attention, 0 for a row that puts all its weight on one key.
    """
    return -(attention * attention.clamp_min(torch.finfo(attention.dtype).tiny).log()).sum(dim=-1)


def query_attention_maps(attention: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                         query: int, image: int = 0) -> torch.Tensor:
    """Attention of token ``query`` over the patch keys, per head: (H, gh, gw).

    ``attention`` is one layer's (B, H, N, N); the prefix-token keys are left out.
    """
    if not 0 <= query < attention.shape[-2]:
        raise VitInspectError(f"query token {query} is outside the sequence of {attention.shape[-2]} tokens")
    return tokens_to_grid(attention[image, :, query], grid, num_prefix_tokens)  # (H, gh, gw)
