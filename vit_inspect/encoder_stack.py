"""Notebook 04_encoder_stack: the encoder stack by hand: LayerNorm, GELU, MLP, the two residual additions.

z'_l = MSA(LN(z_{l-1})) + z_{l-1};  z_l = MLP(LN(z'_l)) + z'_l;  y = LN(z_L).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .attention_by_hand import self_attention_by_hand
from .errors import VitInspectError
from .position_embeddings import tokens_with_position


def layer_norm_by_hand(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last dim, eps from ``norm``: x's shape."""
    if not isinstance(norm, nn.LayerNorm):
        raise VitInspectError(f"expected an nn.LayerNorm, got {type(norm).__name__}")
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)  # LayerNorm uses the biased variance
    normed = (x - mean) / torch.sqrt(var + norm.eps)
    if norm.weight is None:
        return normed
    return normed * norm.weight + (0 if norm.bias is None else norm.bias)


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x) with the exact normal CDF (erf): x's shape."""
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): x's shape."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))


def gelu_of(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The by-hand GELU that an ``nn.GELU`` module computes: ``gelu_tanh`` or ``gelu_exact``, (...) -> (...).

    Read off the module, not assumed: timm's ViT builds ``nn.GELU()`` (exact, erf), while
    the original JAX ViT calls flax's ``nn.gelu``, whose default is the tanh approximation.
    """
    if not isinstance(act, nn.GELU):
        raise VitInspectError(f"gelu_of knows nn.GELU only, got {type(act).__name__}")
    return gelu_tanh if act.approximate == "tanh" else gelu_exact


def _gelu_of(mlp: nn.Module):
    if not isinstance(mlp.act, nn.GELU):
        raise VitInspectError(f"mlp_by_hand knows GELU only, this MLP uses {type(mlp.act).__name__}")
    return gelu_of(mlp.act)


def linear_by_hand(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T + b: (..., in) -> (..., out)."""
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def mlp_by_hand(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fc2(GELU(fc1(x))) with explicit matrix products: (B, N, D) -> (B, N, D) via (B, N, 4D)."""
    hidden = _gelu_of(mlp)(linear_by_hand(mlp.fc1, x))  # (B, N, 4D)
    hidden = mlp.norm(hidden)  # Identity in ViT-B
    return linear_by_hand(mlp.fc2, hidden)  # (B, N, D)


def final_norm_by_hand(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The model's final LayerNorm by hand (models that pool first have none): z's shape."""
    return z if isinstance(model.norm, nn.Identity) else layer_norm_by_hand(model.norm, z)


def block_by_hand(block: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One pre-norm encoder block on the residual stream x (B, N, D); every entry (B, N, D).

    attn: MSA(LN1(x)); mid = x + attn (first residual); mlp: MLP(LN2(mid));
    out = mid + mlp (second residual), equal to ``block(x)``.
    """
    attn = block.ls1(self_attention_by_hand(block, x)["out"])
    mid = x + attn
    mlp = block.ls2(mlp_by_hand(block.mlp, layer_norm_by_hand(block.norm2, mid)))
    return {"attn": attn, "mid": mid, "mlp": mlp, "out": mid + mlp}


def run_blocks_one_at_a_time(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Images (B, 3, H, W) through the encoder, one block at a time, by hand.

    Returns stream (L+1, B, N, D): the residual stream before block 1 and after each
    block; residual_norms (L+1, B, N): its L2 norm per token; final (B, N, D): after the
    final LayerNorm, equal to ``model.forward_features(images)``.
    """
    z = model.norm_pre(tokens_with_position(model, model.patch_embed(images)))  # (B, N, D)
    stream = [z]
    for block in model.blocks:
        z = block_by_hand(block, z)["out"]  # (B, N, D)
        stream.append(z)
    stacked = torch.stack(stream)  # (L+1, B, N, D)
    return {"stream": stacked, "residual_norms": stacked.norm(dim=-1),
            "final": final_norm_by_hand(model, z)}
