"""Switching timm's fused attention off where the weights must be materialised."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def fused_attention_flags(model: nn.Module) -> dict[str, bool]:
    """``{module name: fused_attn}`` for every module that has timm's flag."""
    return {name: module.fused_attn for name, module in model.named_modules()
            if hasattr(module, "fused_attn")}


@contextmanager
def fused_attention(model: nn.Module, enabled: bool = False) -> Iterator[nn.Module]:
    """Set every ``fused_attn`` flag to ``enabled`` inside the block, restore each on exit.

    With ``enabled=False`` timm computes softmax(q k^T / sqrt(d)) explicitly, so hooks on
    ``attn_drop`` see the attention weights.
    """
    modules = dict(model.named_modules())
    saved = fused_attention_flags(model)
    try:
        for name in saved:
            modules[name].fused_attn = enabled
        yield model
    finally:
        for name, flag in saved.items():
            modules[name].fused_attn = flag
