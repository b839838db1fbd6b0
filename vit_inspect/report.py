"""The CLI's main job: one image through one model, a figure and a JSON summary."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from .analysis import (attention_rollout, grid_argmax, mean_attention_distance, rollout_to_grid,
                       uniform_attention_distance)
from .recorder import capture
from .errors import VitInspectError
from .images import preprocess
from .labels import top_k
from .manual_attention import query_attention_maps, token_index
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of
from .plot_analysis import plot_attention_distance, plot_rollout_overlay
from .plot_steps import plot_pos_embed_similarity, plot_query_attention
from .plotting import plot_patch_overlay, plot_top_k, untrained_title
from .posembed import pos_embed_similarity
from .weights import Provenance

REPORT_FIGURE = "report.png"
REPORT_SUMMARY = "summary.json"
DEFAULT_LAYER = 0


@dataclass
class ReportData:
    """Everything the report shows, computed once."""
    image: str
    provenance: Provenance
    preprocessed: object
    patch_size: int
    logits: torch.Tensor                      # (1, num_classes)
    extra: dict = field(default_factory=dict)  # further analyses, keyed by name


def parse_query(text: str) -> tuple[int, int]:
    """Parse "ROW,COL" into (row, col); a one-line error for anything else."""
    parts = text.split(",")
    try:
        row, col = (int(part) for part in parts)
    except ValueError:
        raise VitInspectError(f"--query {text!r}: expected ROW,COL (two integers, e.g. 7,7)") from None
    return row, col


def check_query_and_layer(model: nn.Module, grid: tuple[int, int], query: tuple[int, int] | None,
                          layer: int) -> tuple[int, int]:
    """The query patch (default: the centre one); one-line errors for out-of-range values."""
    gh, gw = grid
    depth = len(getattr(model, "blocks", ()))
    if not 0 <= layer < depth:
        raise VitInspectError(f"--layer {layer}: out of range, the model has {depth} blocks (0..{depth - 1})")
    row, col = (gh // 2, gw // 2) if query is None else query
    if not (0 <= row < gh and 0 <= col < gw):
        raise VitInspectError(f"--query {row},{col}: out of range, the patch grid is {gh}x{gw} "
                              f"(rows 0..{gh - 1}, columns 0..{gw - 1})")
    if getattr(model, "cls_token", None) is None:
        raise VitInspectError(f"{type(model).__name__} has no class token; the report's rollout follows it")
    return row, col


def compute_report(image: str | Path, model: nn.Module, provenance: Provenance,
                   query: tuple[int, int] | None = None, layer: int = DEFAULT_LAYER) -> ReportData:
    """Run the model ONCE on ``image`` (logits and attention together) and gather what the report draws.

    ``query`` (row, col) is the patch whose per-head attention is shown at block ``layer``
    (default: the centre patch at block 0).
    """
    pre = preprocess(image, model)
    grid = grid_size_of(model, pre.tensor)
    query = check_query_and_layer(model, grid, query, layer)
    captured = capture(model, pre.tensor)  # logits (1, C), attention (1, L, H, N, N)
    extra = attention_extras(model, captured["attention"], grid, query, layer)
    return ReportData(str(image), provenance, pre, patch_size_of(model), captured["logits"], extra)


def attention_extras(model: nn.Module, attention: torch.Tensor, grid: tuple[int, int],
                     query: tuple[int, int], layer: int) -> dict:
    """Rollout, mean attention distance, the query's heads and the position-embedding similarity."""
    prefix, patch_size = num_prefix_tokens_of(model), patch_size_of(model)
    rollout = rollout_to_grid(attention_rollout(attention), grid, prefix)  # (1, gh, gw)
    token = token_index(*query, grid, prefix)
    return {
        "query": query,
        "layer": layer,
        "query_maps": query_attention_maps(attention[:, layer], token, grid, prefix),  # (H, gh, gw)
        "rollout_grid": rollout[0],  # (gh, gw)
        "rollout_argmax_patch": grid_argmax(rollout)[0].tolist(),
        "attention_distance": mean_attention_distance(attention, grid, patch_size, prefix)[0],  # (L, H)
        "uniform_distance": uniform_attention_distance(grid, patch_size),
        "pos_embed_similarity": pos_embed_similarity(model),  # (gh, gw, gh, gw)
    }


def summarize(data: ReportData) -> dict:
    """JSON-ready summary: model, weights provenance, input size, top-5, attention distance
    (layers x heads, pixels) and the class token's strongest rollout patch [row, col]."""
    return {
        "model": data.provenance.model,
        "weights": data.provenance.as_dict(),
        "image": data.image,
        "input_size": list(data.preprocessed.tensor.shape[1:]),
        "top5": top_k(data.logits, k=5).rows(0),
        "attention_distance": data.extra["attention_distance"].tolist(),
        "rollout_argmax_patch": data.extra["rollout_argmax_patch"],
    }


def plot_report(data: ReportData) -> Figure:
    """Top row: crop with patch grid, top-5, position-embedding similarity, rollout, distance.

    Below: the per-head attention of the query patch at the chosen layer.
    """
    trained, extra, crop = data.provenance.trained, data.extra, data.preprocessed.crop
    fig = Figure(figsize=(27.0, 9.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.5, 3.5])
    axes = top.subplots(1, 5)
    plot_patch_overlay(crop, data.patch_size, ax=axes[0])
    plot_top_k(top_k(data.logits), ax=axes[1], title=untrained_title("top-5 classes", trained))
    plot_pos_embed_similarity(extra["pos_embed_similarity"], ax=axes[2],
                              title=untrained_title("position embedding similarity", trained))
    plot_rollout_overlay(crop, extra["rollout_grid"], ax=axes[3],
                         title=untrained_title("attention rollout of the class token", trained))
    plot_attention_distance(extra["attention_distance"], ax=axes[4], reference=extra["uniform_distance"],
                            title=untrained_title("mean attention distance", trained))
    _plot_query_heads(bottom, data)
    fig.suptitle(f"{Path(data.image).name} - {data.provenance.label}")
    return fig


def _plot_query_heads(subfigure, data: ReportData) -> None:
    maps = data.extra["query_maps"]  # (H, gh, gw)
    row, col = data.extra["query"]
    cols = len(maps) if len(maps) <= 12 else -(-len(maps) // 2)
    axes = subfigure.subplots(-(-len(maps) // cols), cols, squeeze=False)
    for ax in axes.ravel()[len(maps):]:
        ax.set_axis_off()
    title = f"block {data.extra['layer']}: attention of patch (row {row}, col {col}) per head"
    plot_query_attention(data.preprocessed.crop, maps, (row, col), axes=axes.ravel(),
                         title=untrained_title(title, data.provenance.trained))


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``force``; creates nothing."""
    if out.exists() and not out.is_dir():
        raise VitInspectError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VitInspectError(f"--out {out}: directory is not empty; pass --force to overwrite")


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create ``out``; refuse to write into a non-empty folder unless ``force``."""
    check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write report.png and summary.json into ``out``; return both paths."""
    figure_path, summary_path = out / REPORT_FIGURE, out / REPORT_SUMMARY
    plot_report(data).savefig(figure_path, dpi=110)
    summary_path.write_text(json.dumps(summarize(data), indent=2) + "\n")
    return figure_path, summary_path
