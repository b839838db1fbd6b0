"""The CLI's report: one image through one model, computed once, drawn, and summarised as JSON.

The command-line checks and messages (``--query``, ``--layer``, ``--out``) live in ``cli.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from .attention_by_hand import query_attention_maps
from .attention_maps import (attention_rollout, grid_argmax, mean_attention_distance, rollout_to_grid,
                             uniform_attention_distance)
from .errors import VitInspectError
from .images import preprocess
from .labels import top_k
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of, token_index
from .plotting import (plot_attention_distance, plot_patch_overlay, plot_pos_embed_similarity,
                       plot_query_attention, plot_rollout_overlay, plot_top_k)
from .position_embeddings import pos_embed_similarity
from .recorder import capture
from .weights import Provenance

REPORT_FIGURE = "report.png"
REPORT_SUMMARY = "summary.json"
DEFAULT_LAYER = 0


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, computed from one forward pass."""
    image: str
    provenance: Provenance
    crop: Image.Image                         # the H x W input the model saw
    input_size: tuple[int, int, int]          # (3, H, W)
    patch_size: int
    logits: torch.Tensor                      # (1, C)
    query: tuple[int, int]                    # (row, col) of the query patch, 0-based
    layer: int                                # block whose per-head attention is drawn, 0-based
    query_maps: torch.Tensor                  # (H, gh, gw): the query's attention per head at `layer`
    rollout_grid: torch.Tensor                # (gh, gw): class-token rollout over the patches
    rollout_argmax_patch: tuple[int, int]     # (row, col) of its largest cell
    attention_distance: torch.Tensor          # (L, H), pixels
    uniform_distance: float                   # pixels, what uniform attention gives
    pos_embed_similarity: torch.Tensor        # (gh, gw, gh, gw)


def default_query(grid: tuple[int, int]) -> tuple[int, int]:
    """The centre patch of a (gh, gw) grid."""
    return grid[0] // 2, grid[1] // 2


def compute_report(image: str | Path, model: nn.Module, provenance: Provenance,
                   query: tuple[int, int] | None = None, layer: int = DEFAULT_LAYER) -> ReportData:
    """Run ``model`` ONCE on ``image`` (logits and attention together) and gather what the report draws.

    ``query`` (row, col) is the patch whose per-head attention is shown at block ``layer``
    (default: the centre patch at block 0).
    """
    if getattr(model, "cls_token", None) is None:
        raise VitInspectError(f"{type(model).__name__} has no class token; the report's rollout follows it")
    pre = preprocess(image, model)
    grid, prefix, patch_size = grid_size_of(model, pre.tensor), num_prefix_tokens_of(model), patch_size_of(model)
    query = default_query(grid) if query is None else query
    token = token_index(*query, grid, prefix)
    captured = capture(model, pre.tensor)  # logits (1, C), attention (1, L, H, N, N)
    attention = captured["attention"]
    if not 0 <= layer < attention.shape[1]:
        raise VitInspectError(f"layer {layer} is out of range: the model has {attention.shape[1]} blocks")
    rollout = rollout_to_grid(attention_rollout(attention), grid, prefix)  # (1, gh, gw)
    return ReportData(
        image=str(image), provenance=provenance, crop=pre.crop, input_size=tuple(pre.tensor.shape[1:]),
        patch_size=patch_size, logits=captured["logits"], query=query, layer=layer,
        query_maps=query_attention_maps(attention[:, layer], grid, prefix, token),  # (H, gh, gw)
        rollout_grid=rollout[0], rollout_argmax_patch=tuple(grid_argmax(rollout)[0].tolist()),
        attention_distance=mean_attention_distance(attention, grid, prefix, patch_size)[0],  # (L, H)
        uniform_distance=uniform_attention_distance(grid, patch_size),
        pos_embed_similarity=pos_embed_similarity(model))


def summarize(data: ReportData) -> dict:
    """JSON-ready summary: model, weights provenance, input size, top-5, attention distance
    (layers x heads, pixels) and the class token's strongest rollout patch [row, col]."""
    return {
        "model": data.provenance.model,
        "weights": data.provenance.as_dict(),
        "image": data.image,
        "input_size": list(data.input_size),
        "top5": top_k(data.logits, k=5).rows(0),
        "attention_distance": data.attention_distance.tolist(),
        "rollout_argmax_patch": list(data.rollout_argmax_patch),
    }


def plot_report(data: ReportData) -> Figure:
    """Top row: crop with patch grid, top-5, position-embedding similarity, rollout, distance.

    Below: the per-head attention of the query patch at the chosen layer.
    """
    trained = data.provenance.trained
    fig = Figure(figsize=(27.0, 9.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.5, 3.5])
    axes = top.subplots(1, 5)
    plot_patch_overlay(data.crop, data.patch_size, ax=axes[0])
    plot_top_k(top_k(data.logits), trained=trained, ax=axes[1], title="top-5 classes")
    plot_pos_embed_similarity(data.pos_embed_similarity, trained=trained, ax=axes[2],
                              title="position embedding similarity")
    plot_rollout_overlay(data.crop, data.rollout_grid, trained=trained, ax=axes[3],
                         title="attention rollout of the class token")
    plot_attention_distance(data.attention_distance, reference=data.uniform_distance, trained=trained, ax=axes[4],
                            title="mean attention distance")
    _plot_query_heads(bottom, data)
    fig.suptitle(f"{Path(data.image).name} - {data.provenance.label}")
    return fig


def _plot_query_heads(subfigure, data: ReportData) -> None:
    maps = data.query_maps  # (H, gh, gw)
    row, col = data.query
    cols = len(maps) if len(maps) <= 12 else -(-len(maps) // 2)
    axes = subfigure.subplots(-(-len(maps) // cols), cols, squeeze=False)
    for ax in axes.ravel()[len(maps):]:
        ax.set_axis_off()
    title = f"block {data.layer}: attention of patch (row {row}, col {col}) per head"
    plot_query_attention(data.crop, maps, (row, col), trained=data.provenance.trained, axes=axes.ravel(),
                         title=title)


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write report.png and summary.json into the folder ``out`` (created if missing); return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    figure_path, summary_path = out / REPORT_FIGURE, out / REPORT_SUMMARY
    plot_report(data).savefig(figure_path, dpi=110)
    summary_path.write_text(json.dumps(summarize(data), indent=2) + "\n")
    return figure_path, summary_path
