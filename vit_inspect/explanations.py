"""Notebook 12_explanations: which explanation of a ViT's decision to trust, ranked by tests that can fail.

One entry point, :func:`explain` ``(model, images, method, target=None) -> (B, gh, gw)``,
non-negative, for any timm ViT (prefix tokens, registers, non-square grids). It leaves
the model exactly as it was: training flag, fused-attention flags, hooks, each
parameter's ``requires_grad`` and its ``.grad``.

Methods (``METHODS``):

- ``"attention"``: the class token's last-layer attention, heads averaged;
- ``"rollout"``: attention rollout (Abnar & Zuidema 2020), :mod:`.attention_maps`;
- ``"chefer"``: gradient-weighted rollout (Chefer, Gur & Wolf 2021): per block
  A_bar = mean over heads of (dy_t/dA * A)^+, then R = R + A_bar R from R = I;
- ``"gradcam"``: Grad-CAM on the patch tokens after the last block's ``norm1``,
  computed by the pytorch-grad-cam library with its ViT reshape;
- ``"input_x_gradient"``, ``"integrated_gradients"``: captum, summed per patch;
- baselines that know nothing about the model: ``"brightness"`` (mean brightness per
  patch), ``"edges"`` (mean Sobel edge magnitude per patch), ``"random"`` (seeded).

Gradient attributions are signed; :func:`explain` keeps their positive part (evidence
for the target class), :func:`patch_attributions` returns them signed.

Faithfulness (:func:`perturbation_curves`, :func:`road_scores`) and the sanity checks
of Adebayo et al. 2018 (:func:`cascading_randomisation`) take any of these methods.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attention_maps import attention_rollout
from .errors import VitInspectError
from .images import data_config_of
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of
from .recorder import capture, fused_attention
from .training import (TrainConfig, TrainingData, build_vit, curve_area, importance_order, rank_correlation,
                       randomise_top_blocks, spec_of, train_vit)

ATTENTION_METHODS = ("attention", "rollout")
GRADIENT_METHODS = ("chefer", "gradcam", "input_x_gradient", "integrated_gradients")
BASELINES = ("brightness", "edges", "random")
METHODS = (*ATTENTION_METHODS, *GRADIENT_METHODS, *BASELINES)
IG_STEPS = 32  # integrated gradients: points on the path (Gauss-Legendre, captum's default rule)


# ---------------------------------------------------------------- the entry point


def explain(model: nn.Module, images: torch.Tensor, method: str, target: torch.Tensor | int | None = None,
            *, seed: int = 0, ig_steps: int = IG_STEPS) -> torch.Tensor:
    """Importance of every patch of ``images`` (B, 3, H, W) for class ``target``: (B, gh, gw), >= 0.

    ``images`` are the normalised model input; ``target`` a class index per image (an int
    for all), default the predicted class. ``seed``: the "random" baseline's;
    ``ig_steps``: integrated gradients' path points. The model is left exactly as it was.
    """
    if method not in METHODS:
        raise VitInspectError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if images.ndim != 4:
        raise VitInspectError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    with untouched(model):
        if method in BASELINES:
            return BASELINE_MAPS[method](model, images, seed).detach()
        if method in ATTENTION_METHODS:  # the class token's own maps: the same for every target
            return ATTENTION_MAPS[method](model, images).detach()
        targets = class_targets(model, images, target)  # (B,)
        return GRADIENT_MAPS[method](model, images, targets, ig_steps).detach().clamp_min(0)


def class_targets(model: nn.Module, images: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    """The class per image (B,): ``target`` broadcast, or the model's prediction when None."""
    B = images.shape[0]
    if target is None:
        with torch.no_grad():
            return model(images).argmax(dim=-1)  # (B,)
    targets = torch.as_tensor(target, dtype=torch.long)
    targets = targets.expand(B) if targets.ndim == 0 else targets  # (B,)
    if targets.shape != (B,):
        raise VitInspectError(f"target must be one class index per image ({B}), got shape {tuple(targets.shape)}")
    return targets


# ---------------------------------------------------------------- leaving the model as it was


@contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; training flag, requires_grad and .grad restored on exit.

    Fused-attention flags and hooks are scoped by the helpers that change them.
    """
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    training = model.training
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, (requires_grad, grad) in zip(params, saved):
            p.requires_grad_(requires_grad)
            p.grad = grad
        model.train(training)


def model_state(model: nn.Module) -> dict[str, object]:
    """What :func:`explain` must leave alone, comparable with ==: flags, hooks, training, requires_grad, grads."""
    grads = tuple(None if p.grad is None else (p.grad.data_ptr(), float(p.grad.detach().double().sum()))
                  for p in model.parameters())
    return {"fused_attn": tuple((n, m.fused_attn) for n, m in model.named_modules() if hasattr(m, "fused_attn")),
            "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                         for m in model.modules()),
            "training": tuple(m.training for m in model.modules()),
            "requires_grad": tuple(p.requires_grad for p in model.parameters()),
            "grads": grads,
            "parameters": tuple(float(p.detach().double().sum()) for p in model.parameters())}


# ---------------------------------------------------------------- token rows -> patch grids


def patch_grid(values: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """A value per token (B, N) -> one per patch (B, gh, gw): prefix tokens dropped, row-major."""
    gh, gw = grid
    B, N = values.shape
    if N != num_prefix_tokens + gh * gw:
        raise VitInspectError(f"{N} tokens do not match {num_prefix_tokens} prefix + {gh}x{gw} patches")
    return values[:, num_prefix_tokens:].reshape(B, gh, gw)  # (B, gh, gw)


def query_row(matrix: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """(B, N, N) token-to-token relevance -> (B, N): the class token's row, or the patches' mean without one."""
    if num_prefix_tokens > 0:
        return matrix[:, 0]  # (B, N)
    return matrix.mean(dim=1)  # (B, N): mean pooling reads every token


def _grid_of(model: nn.Module, images: torch.Tensor) -> tuple[tuple[int, int], int]:
    return grid_size_of(model, images), num_prefix_tokens_of(model)


# ---------------------------------------------------------------- attention and rollout (no gradients)


def last_layer_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The class token's attention in the last block, heads averaged: (B, gh, gw)."""
    grid, prefix = _grid_of(model, images)
    last = capture(model, images, layers=[len(model.blocks) - 1])["attention"][:, 0]  # (B, H, N, N)
    return patch_grid(query_row(last.mean(dim=1), prefix), grid, prefix)  # (B, gh, gw)


def rollout_map(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention rollout (heads averaged, identity added), the class token's row: (B, gh, gw)."""
    grid, prefix = _grid_of(model, images)
    rollout = attention_rollout(capture(model, images)["attention"])  # (B, N, N)
    return patch_grid(query_row(rollout, prefix), grid, prefix)  # (B, gh, gw)


ATTENTION_MAPS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "attention": last_layer_attention, "rollout": rollout_map}


# ---------------------------------------------------------------- Chefer et al. 2021


def target_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's target logit (images are independent, so one backward serves all)."""
    return logits.gather(1, targets[:, None]).sum()


def attention_with_gradients(model: nn.Module, images: torch.Tensor,
                             targets: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every block's attention weights A (B, H, N, N) and d(target logit)/dA, one forward + one backward.

    Fused attention is switched off inside (timm then computes softmax(q k^T) explicitly)
    and a hook on each ``attn_drop`` keeps its output, the weights, in the graph.
    """
    attentions: list[torch.Tensor] = []
    keep = lambda module, inputs, output: attentions.append(output)  # noqa: E731
    with ExitStack() as undo, torch.enable_grad():
        undo.enter_context(fused_attention(model, enabled=False))
        for block in model.blocks:
            undo.callback(block.attn.attn_drop.register_forward_hook(keep).remove)
        logits = model(images.detach().requires_grad_(True))  # (B, C)
        gradients = torch.autograd.grad(target_score(logits, targets), attentions)
    if len(attentions) != len(model.blocks):
        raise VitInspectError(f"expected one attention per block, got {len(attentions)}")
    return [a.detach() for a in attentions], list(gradients)


def chefer_layer(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """A_bar = mean over heads of the positive part of gradient * attention: (B, H, N, N) x 2 -> (B, N, N)."""
    return (gradient * attention).clamp_min(0).mean(dim=1)  # (B, N, N)


def chefer_update(relevance: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
    """R <- R + A_bar R: the residual keeps what the tokens held, the attention mixes in the rest."""
    return relevance + weighted @ relevance  # (B, N, N)


def chefer_relevance(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Relevance R (B, N, N) from R = I, updated block by block in forward order."""
    B, H, N, _ = attentions[0].shape
    relevance = torch.eye(N, dtype=attentions[0].dtype).expand(B, N, N)  # (B, N, N)
    for attention, gradient in zip(attentions, gradients):
        relevance = chefer_update(relevance, chefer_layer(attention, gradient))
    return relevance


def chefer_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ig_steps: int = 0) -> torch.Tensor:
    """Chefer et al.'s relevance of the class token over the patches: (B, gh, gw), >= 0."""
    grid, prefix = _grid_of(model, images)
    relevance = chefer_relevance(*attention_with_gradients(model, images, targets))  # (B, N, N)
    return patch_grid(query_row(relevance, prefix), grid, prefix)  # (B, gh, gw)


# ---------------------------------------------------------------- Grad-CAM (pytorch-grad-cam)


def tokens_to_channels(grid: tuple[int, int], num_prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's reshape for ViTs, for any grid and prefix: (B, N, D) -> (B, D, gh, gw)."""
    gh, gw = grid

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        B, N, D = tokens.shape
        return tokens[:, num_prefix_tokens:].reshape(B, gh, gw, D).permute(0, 3, 1, 2)  # (B, D, gh, gw)
    return reshape


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The layer of pytorch-grad-cam's ViT example: the last block's ``norm1``."""
    return model.blocks[-1].norm1


def gradcam_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ig_steps: int = 0) -> torch.Tensor:
    """Grad-CAM by pytorch-grad-cam at the patch grid: (B, gh, gw), each image scaled to [0, 1] as the library does."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    grid, prefix = _grid_of(model, images)
    with GradCAM(model, [gradcam_layer(model)], reshape_transform=tokens_to_channels(grid, prefix)) as cam, \
            torch.enable_grad():
        cam.get_target_width_height = lambda _images: (grid[1], grid[0])  # cv2's (width, height): no resizing
        maps = cam(images.detach().requires_grad_(True), [ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(np.ascontiguousarray(maps)).reshape(len(targets), *grid)  # (B, gh, gw)


# ---------------------------------------------------------------- captum: input x gradient, integrated gradients


def per_patch(attributions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pixel attributions (B, C, H, W) summed over channels and each patch's pixels: (B, gh, gw)."""
    B, C, H, W = attributions.shape
    p = patch_size
    return attributions.reshape(B, C, H // p, p, W // p, p).sum(dim=(1, 3, 5))  # (B, gh, gw)


def input_x_gradient_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                         ig_steps: int = 0) -> torch.Tensor:
    """captum's InputXGradient, signed, summed per patch: (B, gh, gw)."""
    from captum.attr import InputXGradient

    with torch.enable_grad():
        pixels = InputXGradient(model).attribute(images.detach().requires_grad_(True), target=targets)
    return per_patch(pixels, patch_size_of(model))


def integrated_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int = IG_STEPS,
                         baseline: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """captum's IntegratedGradients from ``baseline`` (default 0: the normalisation's mean colour).

    Returns {"patches": (B, gh, gw) signed, "delta": (B,) captum's completeness error:
    sum of attributions - (f_t(x) - f_t(baseline))}.
    """
    from captum.attr import IntegratedGradients

    with torch.enable_grad():
        pixels, delta = IntegratedGradients(model).attribute(
            images.detach().requires_grad_(True), baselines=baseline, target=targets, n_steps=steps,
            return_convergence_delta=True)
    return {"patches": per_patch(pixels, patch_size_of(model)), "delta": delta}


def integrated_gradients_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                             ig_steps: int = IG_STEPS) -> torch.Tensor:
    """Integrated gradients from the mean colour, signed, summed per patch: (B, gh, gw)."""
    return integrated_gradients(model, images, targets, ig_steps)["patches"]


GRADIENT_MAPS: dict[str, Callable[..., torch.Tensor]] = {
    "chefer": chefer_map, "gradcam": gradcam_map, "input_x_gradient": input_x_gradient_map,
    "integrated_gradients": integrated_gradients_map}


def patch_attributions(model: nn.Module, images: torch.Tensor, method: str, target=None,
                       ig_steps: int = IG_STEPS) -> torch.Tensor:
    """The signed per-patch attributions of a captum method before :func:`explain` keeps their positive part."""
    if method not in ("input_x_gradient", "integrated_gradients"):
        raise VitInspectError(f"signed attributions exist for input_x_gradient and integrated_gradients, not {method!r}")
    with untouched(model):
        return GRADIENT_MAPS[method](model, images, class_targets(model, images, target), ig_steps).detach()


# ---------------------------------------------------------------- baselines that know nothing of the model


def pixels_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalised input (B, 3, H, W) -> its grey level (B, 1, H, W) in the [0, 1] pixel scale."""
    config = data_config_of(model)
    mean = torch.tensor(config["mean"], dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], dtype=images.dtype).view(1, 3, 1, 1)
    return (images.detach() * std + mean).mean(dim=1, keepdim=True)  # (B, 1, H, W)


def brightness_map(model: nn.Module, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Mean brightness of every patch: (B, gh, gw) (on white-on-black digits: the ink)."""
    return F.avg_pool2d(pixels_of(model, images), patch_size_of(model))[:, 0]  # (B, gh, gw)


SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def edge_map(model: nn.Module, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Mean Sobel gradient magnitude of every patch: (B, gh, gw); the image border counts as no edge."""
    grey = F.pad(pixels_of(model, images), (1, 1, 1, 1), mode="replicate")  # (B, 1, H + 2, W + 2)
    kernels = torch.stack([SOBEL, SOBEL.T])[:, None].to(grey.dtype)  # (2, 1, 3, 3): d/dx, d/dy
    gradient = F.conv2d(grey, kernels)  # (B, 2, H, W)
    return F.avg_pool2d(gradient.norm(dim=1, keepdim=True), patch_size_of(model))[:, 0]  # (B, gh, gw)


def random_map(model: nn.Module, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform random importance per patch, seeded: (B, gh, gw)."""
    gh, gw = grid_size_of(model, images)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape[0], gh, gw, generator=generator)  # (B, gh, gw)


BASELINE_MAPS: dict[str, Callable[[nn.Module, torch.Tensor, int], torch.Tensor]] = {
    "brightness": brightness_map, "edges": edge_map, "random": random_map}


# ---------------------------------------------------------------- faithfulness: deletion, insertion, ROAD


FILLS = ("mean", "blur")


def fill_images(images: torch.Tensor, fill: str | torch.Tensor = "mean", patch_size: int = 4) -> torch.Tensor:
    """What a removed patch shows, (B, 3, H, W): the per-channel mean of ``images`` (the data set's
    mean when ``images`` is the data set), a Gaussian blur of each image (sigma = one patch), or a given tensor.

    Not the background colour: on white-on-black digits a black fill makes any ink-first order win.
    """
    if isinstance(fill, torch.Tensor):
        return fill.expand_as(images)
    if fill == "mean":
        return images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images)  # (B, 3, H, W)
    if fill == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = 4 * patch_size + 1
        return gaussian_blur(images, [size, size], [float(patch_size)] * 2)  # (B, 3, H, W)
    raise VitInspectError(f"fill must be one of {FILLS} or a tensor, got {fill!r}")


def patch_mask(order: torch.Tensor, count: int, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, P) patch order -> (B, 1, H, W) True on the pixels of each image's first ``count`` patches."""
    B = order.shape[0]
    chosen = (order.argsort(dim=1) < count).reshape(B, 1, *grid)  # (B, 1, gh, gw)
    return chosen.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # (B, 1, H, W)


@torch.no_grad()
def target_probability(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each image's target class: (B,)."""
    return model(images).softmax(dim=-1).gather(1, targets[:, None])[:, 0]


def perturbation_curves(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                        steps: int = 8, fill: str | torch.Tensor = "mean") -> dict[str, torch.Tensor]:
    """Deletion and insertion curves (Petsiuk et al. 2018), most important patch first: each (B, steps + 1).

    Column k: the target probability after round(k / steps * P) patches are replaced by the
    fill ("deletion"; faithful = falls fast, small area) or after only they are kept on the
    fill ("insertion"; faithful = rises fast, large area). Ties in ``maps`` go row-major.
    """
    grid, p = tuple(maps.shape[-2:]), patch_size_of(model)
    order = importance_order(maps)  # (B, P)
    filled = fill_images(images, fill, p)  # (B, 3, H, W)
    P = order.shape[1]
    deletion, insertion = [], []
    with untouched(model):
        for k in range(steps + 1):
            mask = patch_mask(order, round(k / steps * P), grid, p)  # (B, 1, H, W)
            deletion.append(target_probability(model, torch.where(mask, filled, images), targets))
            insertion.append(target_probability(model, torch.where(mask, images, filled), targets))
    return {"deletion": torch.stack(deletion, dim=1), "insertion": torch.stack(insertion, dim=1)}  # (B, steps + 1)


def road_scores(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                percentiles: Sequence[int] = (20, 40, 60, 80), seed: int = 0) -> torch.Tensor:
    """ROAD (Rong et al. 2022) by pytorch-grad-cam: (B,), larger = more faithful.

    ``ROADCombined``: the mean over ``percentiles`` of (probability drop removing the least
    relevant pixels - drop removing the most relevant) / 2, removed pixels filled by noisy
    linear imputation from their neighbours (seeded). Maps act per pixel, each patch's value on its pixels.
    """
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    p = patch_size_of(model)
    pixel_maps = maps.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)  # (B, H, W)
    with untouched(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = ROADCombined(percentiles=list(percentiles))(
            images, pixel_maps.float().numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], model)
    return torch.as_tensor(np.asarray(scores, dtype=np.float64)).reshape(-1)  # (B,)


# ---------------------------------------------------------------- sanity checks (Adebayo et al. 2018)


def cascading_randomisation(model: nn.Module, images: torch.Tensor, method: str, targets: torch.Tensor,
                            seed: int = 0) -> torch.Tensor:
    """Spearman rank correlation of each map with the intact model's as the top k blocks are re-initialised: (L + 1, B).

    Row k: the top k blocks re-drawn from timm's initialisation (``randomise_top_blocks``; a
    model from ``build_vit``); row 0 is 1. The target class stays the intact model's.
    Near 1 all the way down: the method does not depend on those weights (it fails the check).
    """
    intact = explain(model, images, method, targets, seed=seed)  # (B, gh, gw)
    rows = [rank_correlation(intact, explain(randomise_top_blocks(model, count, seed), images, method, targets,
                                             seed=seed)) for count in range(len(model.blocks) + 1)]
    return torch.stack(rows)  # (L + 1, B)


def data_randomisation(model: nn.Module, shuffled: nn.Module, images: torch.Tensor, method: str,
                       targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Spearman rank correlation of each map of ``model`` with that of ``shuffled``, the same architecture
    trained for the same steps on permuted labels: (B,). Near 1: the method ignores what the labels taught."""
    return rank_correlation(explain(model, images, method, targets, seed=seed),
                            explain(shuffled, images, method, targets, seed=seed))  # (B,)


def shuffled_label_model(model: nn.Module, data: TrainingData, config: TrainConfig, seed: int = 0) -> nn.Module:
    """``model``'s architecture trained with ``config`` (the same steps) on the training images with
    their labels permuted (seeded): what Adebayo et al.'s data randomisation compares against."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = data._replace(train_labels=data.train_labels[torch.randperm(len(data.train_labels),
                                                                           generator=generator)])
    twin = build_vit(spec_of(model), config.seed)
    train_vit(twin, shuffled, config, progress=False)
    return twin.eval()


# ---------------------------------------------------------------- the ranking table


CASCADE_SEED = 1  # the re-initialised blocks' seed; build_vit's seed 0 may be the model's own initialisation
MEASURES = ("deletion", "insertion", "road", "cascade", "data", "seconds")
BETTER = {"deletion": -1, "insertion": 1, "road": 1}  # faithfulness measures: which direction is better


def method_scores(model: nn.Module, shuffled: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str,
                  seed: int = 0, sanity: int = 64, road: int = 64, ig_steps: int = 16) -> dict[str, torch.Tensor]:
    """One method's row of the table, per image: "deletion", "insertion" areas (B,), "road" (road,),
    "cascade" (rank correlation with every block re-initialised) and "data" (with the shuffled-label
    model), each (sanity,), on the first images; "seconds" per image (0-dim). Target: the true label."""
    start = time.perf_counter()
    maps = explain(model, images, method, labels, seed=seed, ig_steps=ig_steps)  # (B, gh, gw)
    seconds = torch.tensor((time.perf_counter() - start) / len(images))
    curves = perturbation_curves(model, images, maps, labels)
    subset = slice(0, sanity)
    cascade = cascading_randomisation(model, images[subset], method, labels[subset], CASCADE_SEED)[-1]  # (sanity,)
    return {"deletion": curve_area(curves["deletion"]), "insertion": curve_area(curves["insertion"]),
            "road": road_scores(model, images[:road], maps[:road], labels[:road], seed=seed), "cascade": cascade,
            "data": data_randomisation(model, shuffled, images[subset], method, labels[subset], seed),
            "seconds": seconds}


def ranking_table(model: nn.Module, shuffled: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  methods: Sequence[str] = METHODS, random_seeds: Sequence[int] = (0, 1, 2),
                  **options) -> dict[str, dict[str, torch.Tensor]]:
    """{method: {measure: (mean, half-width of the 95% interval over images)}}: each value a (2,) tensor.

    The random baseline is averaged over ``random_seeds`` image by image first. Options go to
    :func:`method_scores`.
    """
    table = {}
    for method in methods:
        seeds = random_seeds if method == "random" else (0,)
        runs = [method_scores(model, shuffled, images, labels, method, seed, **options) for seed in seeds]
        table[method] = {key: interval(torch.stack([run[key] for run in runs]).mean(dim=0)) for key in MEASURES}
    return table


def interval(values: torch.Tensor) -> torch.Tensor:
    """(n,) per-image values -> (2,): mean and 1.96 standard errors (0 for a single value)."""
    values = values.double().reshape(-1)
    half = 1.96 * values.std() / len(values) ** 0.5 if len(values) > 1 else torch.tensor(0.0, dtype=torch.float64)
    return torch.stack([values.mean(), half])


def beats(table: dict[str, dict[str, torch.Tensor]], method: str, measure: str,
          baselines: Sequence[str] = ("brightness", "edges")) -> bool:
    """Whether ``method``'s interval on a faithfulness ``measure`` lies wholly on the better side of each baseline's."""
    sign = BETTER[measure]
    mean, half = table[method][measure].tolist()
    return all(sign * (mean - table[b][measure][0]) > half + float(table[b][measure][1]) for b in baselines)


def faithful_methods(table: dict[str, dict[str, torch.Tensor]]) -> dict[str, list[str]]:
    """{measure: methods that beat both the brightness and the edges baseline by more than the intervals}."""
    models = [m for m in table if m not in BASELINES]
    return {measure: [m for m in models if beats(table, m, measure)] for measure in BETTER}


def save_ranking(table: dict[str, dict[str, torch.Tensor]], path: str | os.PathLike, notes: dict) -> Path:
    """Write the table as JSON: {method: {measure: [mean, half-width]}} and ``notes`` (how it was made)."""
    record = {"notes": notes, "torch": torch.__version__,
              "table": {m: {k: [round(float(v), 6) for v in pair] for k, pair in row.items()} for m, row in table.items()}}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


SHIPPED_RANKING = "explanations_digits.json"


def load_ranking(path: str | os.PathLike | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """The table of :func:`save_ranking` (default: the one shipped for the digits ViT) and its notes."""
    from .images import data_dir

    path = Path(path) if path is not None else data_dir() / SHIPPED_RANKING
    try:
        record = json.loads(path.read_text())
        table = {m: {k: torch.tensor(pair, dtype=torch.float64) for k, pair in row.items()}
                 for m, row in record["table"].items()}
        return table, record["notes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VitInspectError(f"{path}: not a ranking table written by save_ranking ({err})") from None


def format_ranking(table: dict[str, dict[str, torch.Tensor]]) -> str:
    """The table as aligned text, one row per method, "mean +- half-width" per measure, faithfulness
    measures marked * where the method beats both the brightness and the edges baseline."""
    header = f"{'method':<22}" + "".join(f"{name:>17}" for name in MEASURES)
    lines = [header, "-" * len(header)]
    for method, row in table.items():
        cells = []
        for measure in MEASURES:
            mean, half = row[measure].tolist()
            star = "*" if measure in BETTER and method not in BASELINES and beats(table, method, measure) else " "
            cells.append(f"{mean:>9.3f} +-{half:5.3f}{star}" if measure != "seconds" else f"{mean * 1e3:>13.2f} ms ")
        lines.append(f"{method:<22}" + "".join(cells))
    return "\n".join(lines)


def perturbation_areas(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str,
                       seeds: Sequence[int] = (0,), fill: str | torch.Tensor = "mean") -> dict[str, torch.Tensor]:
    """Deletion and insertion areas per image (B,) of ``method``'s maps, averaged over ``seeds``
    (only the random baseline depends on them), as the ranking table computes them."""
    runs = []
    for seed in seeds:
        maps = explain(model, images, method, labels, seed=seed)  # (B, gh, gw)
        runs.append({k: curve_area(c) for k, c in perturbation_curves(model, images, maps, labels, fill=fill).items()})
    return {key: torch.stack([run[key] for run in runs]).mean(dim=0) for key in runs[0]}  # (B,) each
