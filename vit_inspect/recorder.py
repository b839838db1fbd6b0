"""Recording what a timm ViT computes, leaving the model exactly as it was.

:func:`capture`: logits, every layer's attention weights and block outputs from ONE
forward pass. It works on stock timm ViTs whatever their ``fused_attn`` setting: inside
the call the flags are switched off (timm then computes softmax(q k^T * scale)
explicitly) and a forward hook on each chosen block's ``attn.attn_drop`` sees its
output, which in eval mode is exactly the attention weights. Flags and hooks are
restored on exit, even after an exception.

The hook copies each layer's weights into one (B, L, H, N, N) output, and/or hands them
to ``analyses`` (a :class:`LayerAnalysis` each, e.g. a rollout or a distance that
accumulates layer by layer), so an analysis of every layer needs no (B, L, H, N, N)
tensor at all.

:func:`fused_attention` is that scoped switch on its own; :func:`timm_attention_weights`
records one block's weights for notebook 03.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

from .errors import VitInspectError


class LayerAnalysis(Protocol):
    """Something computed from each chosen layer's attention as the forward pass produces it."""

    def update(self, slot: int, attention: torch.Tensor) -> None:
        """Take layer ``slot``'s (B, H, N, N) attention (``slot`` counts the chosen layers, 0 first)."""

    def result(self) -> torch.Tensor:
        """What the analysis computed, once every chosen layer has been seen."""


def capture(model: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None,
            blocks: bool = False, attention_out: torch.Tensor | None = None,
            analyses: Mapping[str, LayerAnalysis] | None = None,
            keep_attention: bool = True) -> dict[str, torch.Tensor]:
    """Run ``model`` once on ``images`` (B, 3, H, W) and record what it computed.

    Returns ``{"logits": (B, C), "attention": (B, L, H, N, N)}`` and, with ``blocks=True``,
    ``"blocks": (B, L, N, D)`` (each chosen block's output). L counts the chosen
    ``layers`` (default: all, in order); N = num_prefix_tokens + patches, prefix first.
    The returned tensors are ordinary (not inference-mode) tensors.

    ``attention_out``: a (B, L, H, N, N) tensor to write the attention into, reused across
    calls when streaming over many batches. A fresh 100+ MB output costs a page fault per
    4 KiB on first write, which is most of capture's overhead over a plain forward.

    ``analyses``: ``{name: LayerAnalysis}``, each handed every chosen layer's (B, H, N, N)
    attention in forward order; ``name`` maps to its ``result()`` in the returned dict.
    ``keep_attention=False`` stores no attention (no "attention" key): only the analyses see it.
    """
    chosen = _chosen_layers(model, layers)
    counter = _Recorder(len(chosen), store=False)  # checks every chosen layer ran exactly once
    consumers: list[LayerAnalysis] = [counter, *(analyses or {}).values()]
    recorders = {"attention": _Recorder(len(chosen), attention_out)} if keep_attention else {}
    consumers += recorders.values()
    targets = [(_attention_module(model, i), slot, consumers) for slot, i in enumerate(chosen)]
    if blocks:
        recorders["blocks"] = _Recorder(len(chosen))
        targets += [(model.blocks[i], slot, [recorders["blocks"]]) for slot, i in enumerate(chosen)]
    with torch.inference_mode(), _recording(model, targets):
        logits = model(images)  # (B, C)
    counter.result()
    with torch.inference_mode(False):  # normal tensors, usable outside inference mode
        found = {name: analysis.result().clone() for name, analysis in (analyses or {}).items()}
        return {"logits": logits.clone(), **{key: rec.result() for key, rec in recorders.items()}, **found}


def _chosen_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    if getattr(model, "training", False):
        raise VitInspectError("capture needs the model in eval mode (dropout would change the "
                              "attention weights); call model.eval() first")
    if not isinstance(getattr(model, "blocks", None), nn.Sequential):
        raise VitInspectError(f"{type(model).__name__} has no timm-style `blocks`; "
                              "capture supports timm VisionTransformer models")
    depth = len(model.blocks)
    chosen = list(range(depth)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < depth]
    if bad or not chosen:
        raise VitInspectError(f"layers {bad} out of range: the model has {depth} blocks, "
                              f"numbered 0..{depth - 1}" if bad else "layers is empty")
    return chosen


def _attention_module(model: nn.Module, layer: int) -> nn.Module:
    """The module whose output is layer ``layer``'s attention weights (eval mode)."""
    attn = getattr(model.blocks[layer], "attn", None)
    if not (hasattr(attn, "attn_drop") and hasattr(attn, "fused_attn")):
        raise VitInspectError(f"blocks[{layer}].attn of {type(model).__name__} has no "
                              "attn_drop/fused_attn; its attention weights cannot be captured")
    return attn.attn_drop


class _Recorder:
    """Copies slot ``i``'s tensor into one preallocated (B, L, ...) output (or only counts, ``store=False``)."""

    def __init__(self, num_slots: int, out: torch.Tensor | None = None, store: bool = True) -> None:
        self.num_slots = num_slots
        self.out = out
        self.store = store
        self.filled: list[int] = [0] * num_slots

    def update(self, slot: int, output: torch.Tensor) -> None:
        self.filled[slot] += 1
        if not self.store:
            return
        expected = (output.shape[0], self.num_slots, *output.shape[1:])
        if self.out is None:
            with torch.inference_mode(False):  # a normal tensor the caller may edit in place
                self.out = output.new_empty(expected)
        elif tuple(self.out.shape) != expected:
            raise VitInspectError(f"attention_out has shape {tuple(self.out.shape)}, expected {expected}")
        self.out[:, slot].copy_(output)

    def result(self) -> torch.Tensor:
        if self.filled != [1] * self.num_slots or (self.store and self.out is None):
            raise VitInspectError(f"expected each recorded layer to run once, got {self.filled} "
                                  "calls: this model's attention does not follow timm's ViT layout")
        return self.out


def _hand_to(consumers: Sequence[LayerAnalysis], slot: int):
    """A forward hook giving the module's output to every consumer as slot ``slot``."""
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        for consumer in consumers:
            consumer.update(slot, output)
    return hook


@contextmanager
def _recording(model: nn.Module,
               targets: list[tuple[nn.Module, int, Sequence[LayerAnalysis]]]) -> Iterator[None]:
    """Unfused attention and forward hooks, all undone on exit (even after an exception)."""
    with ExitStack() as undo:
        undo.enter_context(fused_attention(model, enabled=False))
        for module, slot, consumers in targets:
            undo.callback(module.register_forward_hook(_hand_to(consumers, slot)).remove)
        yield


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


def timm_attention_weights(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention weights timm itself computes in ``block.attn(block.norm1(x))``: (B, H, N, N).

    ``x`` is the residual stream (B, N, D) entering the block. Scoped like :func:`capture`:
    fused attention off and one hook, both undone on exit even if the forward fails.
    """
    recorder = _Recorder(1)
    with torch.no_grad(), _recording(block, [(block.attn.attn_drop, 0, [recorder])]):
        block.attn(block.norm1(x))
    return recorder.result()[:, 0]  # (B, H, N, N)
