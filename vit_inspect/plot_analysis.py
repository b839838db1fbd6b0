"""Figures of the attention analyses: rollout overlay and mean attention distance.

Like ``plotting``: each takes computed tensors, draws into ``ax`` when given and returns
the matplotlib Figure; nothing here runs a model. One query's per-head attention is
drawn by ``plot_steps.plot_query_attention``.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from .plotting import axes_or_new, plot_heatmap_overlay


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def plot_rollout_overlay(crop: Image.Image, rollout_grid: torch.Tensor | np.ndarray,
                         ax: Axes | None = None, title: str = "attention rollout") -> Figure:
    """The class token's rollout (gh, gw) over the crop the model saw (paper Fig. 6)."""
    heat = _numpy(rollout_grid)
    return plot_heatmap_overlay(crop, heat / max(float(heat.max()), 1e-12), ax=ax, title=title)


def plot_attention_distance(distance: torch.Tensor | np.ndarray, ax: Axes | None = None,
                            title: str = "mean attention distance",
                            reference: float | None = None) -> Figure:
    """(L, H) distances in pixels as the paper plots them: one dot per head, x = layer.

    ``reference`` (e.g. the distance of uniform attention) is drawn as a dashed line.
    """
    ax = axes_or_new(ax)
    values = _numpy(distance)
    L, H = values.shape
    colours = _head_colours(H)
    for head in range(H):
        ax.scatter(np.arange(L), values[:, head], s=14, color=colours[head], label=f"head {head + 1}")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("network depth (block index)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, 1.1 * max(float(values.max()), reference or 0.0))
    ax.set_title(title)
    ax.legend(fontsize="xx-small", ncols=2, loc="lower right")
    return ax.figure


def _head_colours(count: int) -> list[tuple]:
    """A distinct colour per head: tab10 up to 10 heads, tab20 (cycled) beyond."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(head % palette.N) for head in range(count)]
