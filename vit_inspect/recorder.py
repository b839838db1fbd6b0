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

When only analyses want the weights (``keep_attention=False``) and the attention is
timm's own ``Attention``, the model keeps its fused attention and the weights are
computed from the q and k that timm passes to it, into two buffers reused by every
layer. timm's explicit path allocates two fresh (B, H, N, N) tensors per layer, and the
allocator hands that memory back to the system between layers: each one then costs a
page fault per 4 KiB again (see ``make bench``).

:func:`fused_attention` is that scoped switch on its own; :func:`timm_attention_weights`
records one block's weights for notebook 03.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch
from timm.layers import Attention
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import VitInspectError


class LayerAnalysis(Protocol):
    """Something computed from each chosen layer's attention as the forward pass produces it."""

    def update(self, slot: int, attention: torch.Tensor) -> None:
        """Take layer ``slot``'s (B, H, N, N) attention (``slot`` counts the chosen layers, 0 first).

        ``attention`` may be a buffer that the next layer overwrites: copy what you keep.
        """

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
    On timm's own ``Attention`` the fused kernel then stays on and the analyses get
    softmax(q k^T * scale) from its q and k: the recorded weights up to float rounding.
    """
    chosen = _chosen_layers(model, layers)
    counter = _Recorder(len(chosen), store=False)  # checks every chosen layer ran exactly once
    consumers: list[LayerAnalysis] = [counter, *(analyses or {}).values()]
    recorders = {"attention": _Recorder(len(chosen), attention_out)} if keep_attention else {}
    consumers += recorders.values()
    modules = [_attention_module(model, i) for i in chosen]
    fused = not keep_attention and all(type(attn) is Attention for attn in modules)
    hooks = _weights_hooks(modules, consumers, fused)
    if blocks:
        recorders["blocks"] = _Recorder(len(chosen))
        hooks += [_on_output(model.blocks[i], _hand_to([recorders["blocks"]], slot)) for slot, i in enumerate(chosen)]
    with torch.inference_mode(), _recording(model, hooks, fused):
        logits = model(images)  # (B, C)
    counter.result()
    with torch.inference_mode(False):  # normal tensors, usable outside inference mode
        found = {name: analysis.result().clone() for name, analysis in (analyses or {}).items()}
        return {"logits": logits.clone(), **{key: rec.result() for key, rec in recorders.items()}, **found}


def _weights_hooks(modules: Sequence[nn.Module], consumers: Sequence[LayerAnalysis],
                   fused: bool) -> list[Registration]:
    """Hooks handing each attention's weights to the consumers: computed beside the fused kernel, or recorded."""
    if fused:
        return _WeightsFromQK().hooks(modules, consumers)
    return [_on_output(attn.attn_drop, _hand_to(consumers, slot)) for slot, attn in enumerate(modules)]


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
    """Block ``layer``'s attention, whose ``attn_drop`` outputs its weights when not fused (eval mode)."""
    attn = getattr(model.blocks[layer], "attn", None)
    if not (hasattr(attn, "attn_drop") and hasattr(attn, "fused_attn")):
        raise VitInspectError(f"blocks[{layer}].attn of {type(model).__name__} has no "
                              "attn_drop/fused_attn; its attention weights cannot be captured")
    return attn


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


Registration = Callable[[], RemovableHandle]


def _on_output(module: nn.Module, hook: Callable) -> Registration:
    return lambda: module.register_forward_hook(hook)


class _WeightsFromQK:
    """softmax(q k^T * scale) from the q and k that timm's ``Attention`` computes, fused path left on.

    Written like timm's explicit path, into one (B, H, N, N) buffer that every layer of the
    forward pass reuses, one image at a time: its (H, N, N) scores, in a scratch buffer of
    their own, stay in cache for the softmax (never computed in place, whose aliasing not
    every backend's kernel allows).
    """

    def __init__(self) -> None:
        self.q: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    def hooks(self, modules: Sequence[nn.Module], consumers: Sequence[LayerAnalysis]) -> list[Registration]:
        hooks = []
        for slot, attn in enumerate(modules):
            hooks += [lambda attn=attn: attn.register_forward_pre_hook(_refuse_masks, with_kwargs=True),
                      _on_output(attn.q_norm, self._keep_q),
                      _on_output(attn.k_norm, self._hand_weights(attn.scale, slot, consumers))]
        return hooks

    def _keep_q(self, module: nn.Module, inputs: tuple, q: torch.Tensor) -> None:
        self.q = q  # (B, H, N, d)

    def _hand_weights(self, scale: float, slot: int, consumers: Sequence[LayerAnalysis]):
        def hook(module: nn.Module, inputs: tuple, k: torch.Tensor) -> None:
            if self.q is None:
                raise VitInspectError("k_norm ran before q_norm: this attention does not follow timm's layout")
            weights = self.weights_of(self.q * scale, k)  # (B, H, N, N)
            self.q = None
            for consumer in consumers:
                consumer.update(slot, weights)
        return hook

    def weights_of(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) scaled queries and keys -> (B, H, N, N) weights, in the reused buffer."""
        B, H, N, d = q.shape
        if self.weights is None or self.weights.shape != (B, H, N, N) or self.weights.dtype != q.dtype:
            self.weights, self.scores = q.new_empty(B, H, N, N), q.new_empty(H, N, N)
        for image, weights in enumerate(self.weights):  # weights: (H, N, N)
            torch.bmm(q[image], k[image].transpose(1, 2), out=self.scores)  # (H, N, N)
            torch.softmax(self.scores, dim=-1, out=weights)  # (H, N, N)
        return self.weights


def _refuse_masks(module: nn.Module, args: tuple, kwargs: dict) -> None:
    if len(args) > 1 or kwargs.get("attn_mask") is not None or kwargs.get("is_causal", False):
        raise VitInspectError("this model passes an attention mask: capture its attention with "
                              "keep_attention=True, which records timm's own masked weights")


@contextmanager
def _recording(model: nn.Module, hooks: Sequence[Registration], fused: bool = False) -> Iterator[None]:
    """Every fused_attn flag set to ``fused`` and the hooks registered, all undone on exit (even after an exception)."""
    with ExitStack() as undo:
        undo.enter_context(fused_attention(model, enabled=fused))
        for register in hooks:
            undo.callback(register().remove)
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
    with torch.no_grad(), _recording(block, [_on_output(block.attn.attn_drop, _hand_to([recorder], 0))]):
        block.attn(block.norm1(x))
    return recorder.result()[:, 0]  # (B, H, N, N)
