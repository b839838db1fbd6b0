"""Figures from already-computed tensors. Nothing here runs a model.

Every function draws into ``ax`` when given one (for composite figures such as the
CLI report) and returns the matplotlib Figure.
"""
from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from .labels import TopK


def new_axes(nrows: int = 1, ncols: int = 1, size: float = 4.0, **kwargs) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure (shown once in notebooks, no global state) and its axes grid."""
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def axes_or_new(ax: Axes | None, size: float = 4.0) -> Axes:
    return new_axes(size=size)[1][0, 0] if ax is None else ax


def untrained_title(title: str, trained: bool) -> str:
    """Prefix a title so a figure from random weights cannot pass for the real model."""
    return title if trained else f"UNTRAINED weights - {title}"


def plot_patch_overlay(crop: Image.Image, patch_size: int, ax: Axes | None = None,
                       title: str = "") -> Figure:
    """The model's input crop with its patch grid drawn on top."""
    ax = axes_or_new(ax)
    width, height = crop.size
    ax.imshow(crop)
    ax.set_xticks(np.arange(0, width + 1, patch_size))
    ax.set_yticks(np.arange(0, height + 1, patch_size))
    ax.grid(color="white", linewidth=0.6)
    ax.tick_params(labelbottom=False, labelleft=False, length=0)
    ax.set_title(title or f"input {width}x{height}, {width // patch_size}x{height // patch_size} patches of {patch_size}px")
    return ax.figure


def plot_top_k(topk: TopK, image: int = 0, ax: Axes | None = None, title: str = "top-5") -> Figure:
    """Horizontal bar chart of the top-k probabilities of one image."""
    ax = axes_or_new(ax)
    rows = topk.rows(image)[::-1]
    bars = ax.barh([f"{r['label'][:28]} ({r['index']})" for r in rows], [r["probability"] for r in rows])
    ax.bar_label(bars, labels=[f"{r['probability']:.1%}" for r in rows], padding=3)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("probability")
    ax.set_title(title)
    return ax.figure


def plot_heatmap_overlay(crop: Image.Image, heat: np.ndarray, ax: Axes | None = None,
                         title: str = "", alpha: float = 0.55, cmap: str = "inferno") -> Figure:
    """A (rows, cols) map stretched over the crop, each cell covering its patch exactly."""
    ax = axes_or_new(ax)
    width, height = crop.size
    ax.imshow(crop)
    ax.imshow(np.asarray(heat), cmap=cmap, alpha=alpha, extent=(0, width, height, 0),
              interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return ax.figure
