"""The CLI's report: one image through one model, computed once, drawn, and summarised as JSON.

The command-line checks and messages (``--query``, ``--layer``, ``--out``) live in ``cli.py``.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from torch import nn

from .attention_by_hand import query_attention_maps
from .attention_maps import (attention_rollout, grid_argmax, mean_attention_distance, rollout_to_grid,
                             uniform_attention_distance)
from .errors import VitInspectError
from .images import crop_box, crop_warnings, load_image, preprocess
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
# A 16:9 screen: 1920x1080 px. Shown 1280 px wide, 1 pt of text is 1280 / (16 * 72) = 1.1 px,
# so the smallest text, MIN_FONT_PT, stays about 12 px high.
REPORT_SIZE_IN = (16.0, 9.0)
REPORT_DPI = 120
REPORT_FONT_PT = 12.0
MIN_FONT_PT = 11.0
UNTRAINED_COLOUR = "red"
TITLE_WRAP_CHARS = 130  # a line of the page title at REPORT_FONT_PT + 3 fits the 16-inch width


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
    image_size: tuple[int, int]               # (W, H) of the upright original image
    crop_box: tuple[float, float, float, float]  # (left, top, right, bottom) of the crop, original pixels
    warnings: tuple[str, ...]                 # when the crop drops much of the image or blows it up


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
    original = load_image(image)
    pre = preprocess(original, model)
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
        pos_embed_similarity=pos_embed_similarity(model), image_size=original.size,
        crop_box=crop_box(original.size, pre.data_config),
        warnings=tuple(crop_warnings(original.size, pre.data_config)))


def summarize(data: ReportData) -> dict:
    """JSON-ready summary: model, weights provenance, input size, the crop's place in the image,
    the query patch and layer drawn, top-5, attention distance (layers x heads, pixels), the
    class token's strongest rollout patch [row, col], and warnings about the input."""
    return {
        "model": data.provenance.model,
        "weights": data.provenance.as_dict(),
        "image": data.image,
        "image_size": list(data.image_size),
        "input_size": list(data.input_size),
        "crop_box": [round(value, 2) for value in data.crop_box],
        "query": list(data.query),
        "layer": data.layer,
        "top5": top_k(data.logits, k=5).rows(0),
        "attention_distance": data.attention_distance.tolist(),
        "rollout_argmax_patch": list(data.rollout_argmax_patch),
        "warnings": list(data.warnings),
    }


def plot_report(data: ReportData) -> Figure:
    """A 16:9 page in two rows, readable on a laptop screen.

    Top: the crop with its patch grid, the top-5 classes, the position-embedding similarity,
    the class token's attention rollout. Bottom: the mean attention distance, and the query
    patch's attention per head at the chosen layer. Every panel has room for a colour bar.
    """
    with matplotlib.rc_context({"font.size": REPORT_FONT_PT, "axes.titlesize": REPORT_FONT_PT,
                                "figure.titlesize": REPORT_FONT_PT + 3}):
        fig = Figure(figsize=REPORT_SIZE_IN, layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1.0])
        _plot_top_row(top, data)
        distance_panel, heads_panel = bottom.subfigures(1, 2, width_ratios=[1.1, 2.5])
        _plot_distance(distance_panel, data)
        heads = _plot_query_heads(heads_panel, data)
        _report_title(fig, data)
        readable_text(fig, MIN_FONT_PT)
        wrap_wide_titles(fig, keep=heads)
    return fig


def _plot_top_row(subfigure, data: ReportData) -> None:
    trained = data.provenance.trained
    axes = subfigure.subplots(1, 4, width_ratios=[1.0, 1.75, 1.2, 1.1])
    plot_patch_overlay(data.crop, data.patch_size, ax=axes[0])
    plot_top_k(top_k(data.logits), trained=trained, ax=axes[1], title="top-5 classes", wrap=56)
    plot_pos_embed_similarity(data.pos_embed_similarity, trained=trained, ax=axes[2],
                              title="position embedding similarity")
    plot_rollout_overlay(data.crop, data.rollout_grid, trained=trained, ax=axes[3],
                         title="class token rollout")


def _plot_distance(subfigure, data: ReportData) -> None:
    ax = subfigure.subplots()
    plot_attention_distance(data.attention_distance, reference=data.uniform_distance,
                            trained=data.provenance.trained, ax=ax, title="mean attention distance")
    legend = ax.get_legend()
    if legend is not None:  # beside the dots, where it hides none of them
        legend.remove()
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=1 + (len(legend.texts) > 8),
                  fontsize=MIN_FONT_PT, handletextpad=0.2, columnspacing=0.6, borderaxespad=0.0)


def _plot_query_heads(subfigure, data: ReportData) -> list:
    """The per-head panels (returned): their short two-line titles are sized to fit, never re-wrapped."""
    maps = data.query_maps  # (H, gh, gw)
    row, col = data.query
    cols = min(len(maps), 6)
    axes = subfigure.subplots(-(-len(maps) // cols), cols, squeeze=False)
    for ax in axes.ravel()[len(maps):]:
        ax.set_axis_off()
    title = f"block {data.layer}: attention of patch (row {row}, col {col}) per head"
    plot_query_attention(data.crop, maps, (row, col), trained=data.provenance.trained, axes=axes.ravel(),
                         title=title)
    for ax in axes.ravel()[:len(maps)]:  # twelve small panels: their titles and watermarks at the smallest size
        ax.title.set_fontsize(MIN_FONT_PT)
        for text in ax.texts:
            text.set_fontsize(min(text.get_fontsize(), MIN_FONT_PT + 3))
    return list(axes.ravel()[:len(maps)])


def _report_title(fig: Figure, data: ReportData) -> None:
    """Image name and weights; in red when they are untrained, a second line for each warning."""
    lines = [f"{Path(data.image).name} - {data.provenance.label}"]
    lines += [textwrap.fill(f"warning: {warning}", TITLE_WRAP_CHARS) for warning in data.warnings]
    fig.suptitle("\n".join(lines), color="black" if data.provenance.trained else UNTRAINED_COLOUR)


def wrap_wide_titles(fig: Figure, keep: Sequence = ()) -> None:
    """Break every axes title wider than its axes into lines, so none runs off the page; ``keep``: axes left as they are.

    (Wrapping the titles of narrow panels makes them taller, the layout then makes the panels narrower still.)
    """
    fig.draw_without_rendering()  # lays the figure out, so titles and axes have their sizes
    for ax in fig.get_axes():
        if ax in keep:
            continue
        title = ax.title
        width, room = title.get_window_extent().width, ax.get_window_extent().width
        if title.get_text() and width > room:  # keep the lines the title already has, wrap each
            lines = title.get_text().split("\n")
            chars = max(int(max(map(len, lines)) * room / width), 12)
            title.set_text("\n".join(textwrap.fill(line, chars) for line in lines))


def readable_text(fig: Figure, min_points: float) -> None:
    """Raise every text of ``fig`` smaller than ``min_points`` to it (tick labels, legends, titles)."""
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < min_points:
            text.set_fontsize(min_points)


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write report.png and summary.json into the folder ``out`` (created if missing); return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    figure_path, summary_path = out / REPORT_FIGURE, out / REPORT_SUMMARY
    plot_report(data).savefig(figure_path, dpi=REPORT_DPI)
    summary_path.write_text(json.dumps(summarize(data), indent=2) + "\n")
    return figure_path, summary_path
