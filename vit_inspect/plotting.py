"""Every figure of the suite, from already-computed tensors. Nothing here runs a model.

Each function draws into ``ax`` (or ``axes``) when given one, for composite figures such
as the CLI report, and returns the matplotlib Figure. Sections follow the notebooks.

Rules every figure keeps:

* ``trained`` (a required keyword of every figure whose content depends on the weights):
  with ``trained=False`` the title starts with "UNTRAINED weights" in red and each panel
  carries a red UNTRAINED watermark, so a cropped panel still says so.
* Heatmaps of weights start their colour scale at 0 (or, with negative values, centre it
  on 0), carry a colour bar, and compared panels share one scale; titles keep the max.
* Rows, columns, heads and blocks are numbered from 0, as the code indexes them.
"""
from __future__ import annotations

import io
import math
import textwrap
import zlib
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np
import torch
from matplotlib import colormaps, font_manager, patheffects, rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from .images import denormalize
from .labels import TopK

UNTRAINED_PREFIX = "UNTRAINED weights - "
UNTRAINED_COLOUR = "red"


# ---------------- shared


def new_axes(nrows: int = 1, ncols: int = 1, size: float = 4.0, **kwargs) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure (shown once in notebooks, no global state) and its axes grid."""
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def axes_or_new(ax: Axes | None, size: float = 4.0) -> Axes:
    return new_axes(size=size)[1][0, 0] if ax is None else ax


def untrained_title(title: str, trained: bool) -> str:
    """Prefix a title so a figure from random weights cannot pass for the real model (never twice)."""
    if trained or title.startswith(UNTRAINED_PREFIX):
        return title
    return UNTRAINED_PREFIX + title if title else UNTRAINED_PREFIX.removesuffix(" - ")


def watermark(ax: Axes) -> None:
    """A red UNTRAINED across the panel, above what it shows, so a cropped panel keeps the label."""
    ax.text(0.5, 0.5, "UNTRAINED", transform=ax.transAxes, rotation=30, ha="center", va="center",
            color=UNTRAINED_COLOUR, alpha=0.7, fontsize=18, fontweight="bold", zorder=10,
            path_effects=[patheffects.withStroke(linewidth=3, foreground="white", alpha=0.7)])


def label_panel(ax: Axes, title: str, trained: bool, **title_kwargs) -> None:
    """Set a weight-dependent panel's title; from untrained weights: red, the label on a line of its own
    (panels are narrow), and a watermark."""
    if not trained:
        plain = title.removeprefix(UNTRAINED_PREFIX)
        title = UNTRAINED_PREFIX.removesuffix(" - ") + (f"\n{plain}" if plain else "")
        title_kwargs = {"color": UNTRAINED_COLOUR, **title_kwargs}
        watermark(ax)
    ax.set_title(title, **title_kwargs)


def label_figure(fig: Figure, title: str, trained: bool) -> None:
    """The suptitle of a figure whose panels depend on the weights: red and prefixed when untrained."""
    colour = {} if trained else {"color": UNTRAINED_COLOUR}
    fig.suptitle(untrained_title(title, trained), **colour)


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _mosaic(tiles: np.ndarray, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tiles (R, C, h, w[, ch]) laid out in one array with ``gap`` pixels of ``fill`` between them."""
    R, C, h, w = tiles.shape[:4]
    channels = tiles.shape[4:]
    out = np.full((R * (h + gap) - gap, C * (w + gap) - gap, *channels), fill, dtype=np.float64)
    for r in range(R):
        for c in range(C):
            out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[r, c]
    return out


def _axes_grid(count: int, axes: Sequence[Axes] | np.ndarray | None, ncols: int,
               size: float) -> tuple[Figure, list[Axes]]:
    if axes is not None:
        axes = list(np.ravel(axes))
        return axes[0].figure, axes
    fig, grid = new_axes(math.ceil(count / ncols), min(ncols, count), size=size)
    for ax in grid.ravel()[count:]:
        ax.set_axis_off()
    return fig, list(grid.ravel())


def plot_heatmap_overlay(crop: Image.Image, heat: np.ndarray | torch.Tensor, *, trained: bool,
                         vmin: float = 0.0, vmax: float | None = None, colorbar: bool = True,
                         label: str = "attention weight", uniform: float | None = None,
                         alpha: float = 0.55, cmap: str = "inferno", ax: Axes | None = None,
                         title: str = "") -> Figure:
    """A (rows, cols) map stretched over the crop, row 0 at the top, each cell covering its patch exactly.

    The colour scale runs from ``vmin`` (0) to ``vmax`` (default: the map's max); panels
    that are compared get the same ``vmax``. ``uniform`` (e.g. 1/N for attention) is
    marked on the colour bar. ``trained=False`` labels the panel as untrained.
    """
    ax = axes_or_new(ax)
    heat = _numpy(heat).astype(np.float64)
    width, height = crop.size
    vmax = float(heat.max()) if vmax is None else vmax
    ax.imshow(crop)
    image = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, width, height, 0), interpolation="nearest",
                      vmin=vmin, vmax=max(vmax, vmin + 1e-12))
    if colorbar:  # below the panel: narrow panels keep their width and their title
        add_colorbar(ax.figure, image, ax, label, uniform, orientation="horizontal")
    ax.set_axis_off()
    label_panel(ax, title, trained)
    return ax.figure


def add_colorbar(fig: Figure, mappable, axes: Axes | Sequence[Axes], label: str,
                 uniform: float | None = None, orientation: str = "vertical") -> None:
    """A colour bar for ``axes``; ``uniform`` is drawn on it as a cyan line and stated in the label."""
    bar = fig.colorbar(mappable, ax=axes, shrink=0.8, pad=0.02, orientation=orientation, label=label)
    if orientation == "horizontal":  # long tick labels such as 0.0035 would run into each other
        bar.locator = MaxNLocator(nbins=3)
    if uniform is not None:
        mark = bar.ax.axhline if orientation == "vertical" else bar.ax.axvline
        mark(uniform, color="cyan", linewidth=2)
        bar.set_label(f"{label}; cyan: uniform 1/N = {uniform:.4f}" if orientation == "horizontal"
                      else f"{label}\ncyan: uniform 1/N = {uniform:.4f}")


def _mark_patch(ax: Axes, cell: tuple[int, int], patch_size: int) -> None:
    row, col = cell
    ax.add_patch(Rectangle((col * patch_size, row * patch_size), patch_size, patch_size,
                           fill=False, edgecolor="cyan", linewidth=1.5))


# ---------------- 01 patches


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


def plot_patch_grid(crop: Image.Image, patch_size: int, ax: Axes | None = None, title: str = "",
                    gap: int = 3) -> Figure:
    """The crop the model sees, cut into its patches, drawn as a grid of small images."""
    ax = axes_or_new(ax)
    pixels = np.asarray(crop, dtype=np.float64) / 255  # (H, W, 3)
    H, W, _ = pixels.shape
    p = patch_size
    tiles = pixels.reshape(H // p, p, W // p, p, 3).transpose(0, 2, 1, 3, 4)  # (gh, gw, p, p, 3)
    ax.imshow(_mosaic(tiles, gap, fill=1.0))
    ax.set_axis_off()
    ax.set_title(title or f"{H // p}x{W // p} patches of {p}x{p} px")
    return ax.figure


def plot_filter_components(components: torch.Tensor, *, trained: bool, ax: Axes | None = None, title: str = "",
                           ncols: int = 7) -> Figure:
    """Principal components (k, 3, p, p) as RGB patches, each stretched to [0, 1] on its own."""
    ax = axes_or_new(ax)
    comps = components.detach().float().permute(0, 2, 3, 1).numpy()  # (k, p, p, 3)
    low = comps.min(axis=(1, 2, 3), keepdims=True)
    high = comps.max(axis=(1, 2, 3), keepdims=True)
    comps = (comps - low) / np.maximum(high - low, 1e-12)
    k, p = comps.shape[:2]
    rows = math.ceil(k / ncols)
    padded = np.ones((rows * ncols, p, p, 3))
    padded[:k] = comps
    ax.imshow(_mosaic(padded.reshape(rows, ncols, p, p, 3), gap=2, fill=1.0))
    ax.set_axis_off()
    label_panel(ax, title or f"first {k} principal components of the patch-embedding filters", trained)
    return ax.figure


# ---------------- 02 position embeddings


def plot_pos_embed_similarity(similarity: torch.Tensor, *, trained: bool, ax: Axes | None = None,
                              title: str = "") -> Figure:
    """The (gh, gw, gh, gw) cosine similarities as a gh x gw mosaic of gh x gw tiles.

    Tile (r, c) shows how similar the position embedding of patch (r, c) is to every
    other patch's; one axes, one shared colour scale over the whole range of a cosine,
    -1 to 1; rows and columns numbered from 0.
    """
    ax = axes_or_new(ax, size=6.0)
    gh, gw = similarity.shape[:2]
    ax.set_facecolor("white")
    image = ax.imshow(_mosaic(similarity.detach().float().numpy(), gap=1), cmap="viridis",
                      vmin=-1, vmax=1, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
    ax.set_xticks([(gw + 1) * c + gw / 2 - 0.5 for c in range(gw)], [str(c) for c in range(gw)], fontsize=7)
    ax.set_yticks([(gh + 1) * r + gh / 2 - 0.5 for r in range(gh)], [str(r) for r in range(gh)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("input patch column (from 0)")
    ax.set_ylabel("input patch row (from 0)")
    label_panel(ax, title or "position embedding similarity", trained, fontsize=10)
    return ax.figure


# ---------------- 03 attention by hand


def plot_query_attention(crop: Image.Image, maps: torch.Tensor, query_cell: tuple[int, int] | None = None, *,
                         trained: bool, uniform: float | None = None, axes: Sequence[Axes] | None = None,
                         title: str = "", ncols: int = 4) -> Figure:
    """One panel per head: a query's attention (H, gh, gw) over the key patches, on the crop.

    All heads share one colour scale, from 0 to the largest weight of any head, with one
    colour bar (``uniform``, e.g. 1/N, marked on it); each panel's title keeps its own max.
    ``query_cell`` (row, col) is outlined in cyan; None means the query is the class token.
    """
    H, gh, _ = maps.shape
    fig, axes = _axes_grid(H, axes, ncols, size=2.6)
    patch_size = crop.size[1] // gh
    heats = _numpy(maps).astype(np.float64)  # (H, gh, gw)
    vmax = float(heats.max())
    for head, ax in zip(range(H), axes):
        plot_heatmap_overlay(crop, heats[head], trained=trained, vmax=vmax, colorbar=False, ax=ax,
                             title=f"head {head}: max {heats[head].max():.3f}")
        if query_cell is not None:
            _mark_patch(ax, query_cell, patch_size)
    shared = ScalarMappable(Normalize(0.0, max(vmax, 1e-12)), cmap="inferno")
    add_colorbar(fig, shared, axes[:H], "attention weight, all heads", uniform)
    query = "class token" if query_cell is None else f"patch (row {query_cell[0]}, col {query_cell[1]})"
    label_figure(fig, title or f"attention of {query} over the key patches", trained)
    return fig


def plot_attention_mistakes(crop: Image.Image, maps: dict[str, torch.Tensor], errors: dict[str, float] | None = None,
                            query_cell: tuple[int, int] | None = None, *, trained: bool,
                            axes: Sequence[Axes] | None = None, title: str = "", shared: bool = True) -> Figure:
    """Side by side: the correct map and each mistake's map ({name: (gh, gw)}) for one head/query.

    Maps of weights (no negative value) are compared on one scale from 0 to the largest of
    them (``shared=False``: each from 0 to its own max), so a flatter softmax looks flatter;
    a map with negative values (no softmax at all) gets a scale centred on 0 (blue
    negative, red positive). Every panel keeps a colour bar and its max in its title.
    ``errors`` ({name: relative error of the block output}) goes into the panel titles.
    """
    fig, axes = _axes_grid(len(maps), axes, ncols=min(len(maps), 4), size=3.2)
    gh = next(iter(maps.values())).shape[0]
    weights_max = max((float(_numpy(h).max()) for h in maps.values() if float(_numpy(h).min()) >= 0), default=None)
    for (name, heat), ax in zip(maps.items(), axes):
        heat = _numpy(heat).astype(np.float64)
        low, high = float(heat.min()), float(heat.max())
        limits = ({"vmin": -max(abs(low), high), "vmax": max(abs(low), high), "cmap": "RdBu_r"} if low < 0
                  else {"vmax": weights_max} if shared else {})
        extremes = f"min {low:.3g}, max {high:.3g}" if low < 0 else f"max {high:.3g}"
        error = f"\nout off by {errors[name]:.1%}" if errors and name in errors else ""
        plot_heatmap_overlay(crop, heat, trained=trained, ax=ax, label="weight", title=f"{name}\n{extremes}{error}",
                             **limits)
        if query_cell is not None:
            _mark_patch(ax, query_cell, crop.size[1] // gh)
    label_figure(fig, title or "correct attention vs the course's mistakes", trained)
    return fig


# ---------------- 04 encoder stack


def plot_residual_norms(norms: torch.Tensor, num_prefix_tokens: int, image: int = 0, *, trained: bool,
                        ax: Axes | None = None, title: str = "") -> Figure:
    """Norm of the residual stream (L+1, B, N): z0, then after block 0 ... L-1; class token vs patches."""
    ax = axes_or_new(ax)
    norms = norms[:, image].detach().float()  # (L+1, N)
    layers = np.arange(norms.shape[0])
    ax.plot(layers, norms[:, 0].numpy(), "o-", label="class token")
    ax.plot(layers, norms[:, num_prefix_tokens:].mean(dim=1).numpy(), "s-", label="patch tokens (mean)")
    ax.set_xticks(layers, ["z0"] + [str(i - 1) for i in layers[1:]])
    ax.set_xlabel("after block (from 0)")
    ax.set_ylabel("L2 norm of the residual stream")
    ax.legend()
    label_panel(ax, title or "residual stream norm per layer", trained)
    return ax.figure


def plot_gelu(x: torch.Tensor, exact: torch.Tensor, approx: torch.Tensor, ax: Axes | None = None,
              title: str = "") -> Figure:
    """GELU exact (erf) and its tanh approximation, with their difference on a second axis."""
    ax = axes_or_new(ax)
    x, exact, approx = (t.detach().float().numpy() for t in (x, exact, approx))
    ax.plot(x, exact, label="exact: x Phi(x)")
    ax.plot(x, approx, "--", label="tanh approximation")
    ax.set_xlabel("x")
    ax.legend(loc="upper left")
    twin = ax.twinx()
    twin.plot(x, approx - exact, color="tab:red", linewidth=0.8)
    twin.set_ylabel("tanh - exact", color="tab:red")
    ax.set_title(title or f"GELU (largest difference {np.abs(approx - exact).max():.1e})")
    return ax.figure


# ---------------- 05 classification head


def plot_top_k(topk: TopK, image: int = 0, *, trained: bool, ax: Axes | None = None, title: str = "top-5",
               wrap: int = 48) -> Figure:
    """The top-k classes of one image, best first: percentage, full ImageNet name and index.

    Names are wrapped at ``wrap`` characters, never cut; each row's bar (its probability, on a
    0-1 axis) lies behind its text, so a name of several lines costs no extra bar row.
    """
    ax = axes_or_new(ax)
    rows = topk.rows(image)
    texts = [textwrap.fill(f"{r['probability']:6.1%}  {r['label']} ({r['index']})", wrap,
                           subsequent_indent="        ", break_on_hyphens=False) for r in rows]
    lines = np.array([text.count("\n") + 1 for text in texts])
    tops = np.concatenate([[0.0], np.cumsum(lines + 0.5)[:-1]])  # a row: its lines, then half a line apart
    ax.barh(tops + lines / 2, [r["probability"] for r in rows], height=lines + 0.2, color="tab:blue", alpha=0.3)
    for top, text in zip(tops, texts):
        ax.text(0.01, top + 0.05, text, va="top", ha="left", linespacing=1.0, zorder=11,  # above the watermark
                path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])
    ax.set_ylim(tops[-1] + lines[-1] + 0.25, -0.25)
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([])  # each row states its percentage
    label_panel(ax, title, trained)
    return ax.figure


# ---------------- 06 attention maps


def plot_rollout_overlay(crop: Image.Image, rollout_grid: torch.Tensor | np.ndarray, *, trained: bool,
                         vmax: float | None = None, uniform: float | None = None, ax: Axes | None = None,
                         title: str = "attention rollout") -> Figure:
    """The class token's rollout (gh, gw) over the crop the model saw (paper Fig. 6).

    Colour scale from 0 to ``vmax`` (pass one value to all the panels of a figure), with
    a colour bar on which ``uniform`` (1/N) is marked; the title keeps the map's max.
    """
    heat = _numpy(rollout_grid)
    return plot_heatmap_overlay(crop, heat, trained=trained, vmax=vmax, uniform=uniform, ax=ax,
                                label="rollout weight", title=f"{title}\nmax {float(heat.max()):.4f}")


def plot_rollout_vs_brightness(brightness: torch.Tensor | np.ndarray, rollout_grid: torch.Tensor | np.ndarray,
                               correlation: float, *, trained: bool, ax: Axes | None = None,
                               title: str = "rollout vs patch brightness") -> Figure:
    """One dot per patch: its brightness (gh, gw) against its rollout weight (gh, gw); r in the title."""
    ax = axes_or_new(ax)
    ax.scatter(_numpy(brightness).ravel(), _numpy(rollout_grid).ravel(), s=8, alpha=0.7)
    ax.set_xlabel("mean brightness of the patch (0 to 1)")
    ax.set_ylabel("rollout weight of the patch")
    label_panel(ax, f"{title}: r = {correlation:+.2f}", trained)
    return ax.figure


def plot_attention_distance(distance: torch.Tensor | np.ndarray, reference: float | None = None, *, trained: bool,
                            ax: Axes | None = None, title: str = "mean attention distance") -> Figure:
    """(L, H) distances in pixels as the paper plots them: one dot per head, x = block (from 0).

    ``reference`` (e.g. the distance of uniform attention) is drawn as a dashed line. The
    heads of a block sit side by side around its tick, so equal distances hide no dot.
    """
    own_figure = ax is None
    if own_figure:
        ax = new_axes(size=4.0)[1][0, 0]
        ax.figure.set_size_inches(6.0, 4.0)  # room for the legend beside the axes
    values = _numpy(distance)
    L, H = values.shape
    colours = _head_colours(H)
    for head in range(H):  # each head a little to the side of its block, so equal distances hide no dot
        ax.scatter(np.arange(L) + _dodge(head, H), values[:, head], s=18, color=colours[head],
                   edgecolors="white", linewidths=0.4, label=f"head {head}")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=L if own_figure else "auto", integer=True))  # whole blocks
    ax.set_xlim(-0.5, L - 0.5)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("network depth (block, from 0)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, 1.1 * max(float(values.max()), reference or 0.0))
    label_panel(ax, title, trained)
    if own_figure:  # beside the axes: it covers no dot
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # a panel of a composed figure keeps its width
        ax.legend(fontsize="xx-small", ncols=2, loc="lower right")
    return ax.figure


def _dodge(head: int, heads: int, width: float = 0.6) -> float:
    """Horizontal offset of one head's dots from its block, spreading the heads evenly over ``width``."""
    return (head - (heads - 1) / 2) * width / heads


def _head_colours(count: int) -> list[tuple]:
    """A distinct colour per head: tab10 up to 10 heads, tab20 (cycled) beyond."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(head % palette.N) for head in range(count)]


# ---------------- 08 huggingface


def plot_preprocessing_comparison(inputs: dict[str, torch.Tensor], configs: dict[str, dict],
                                  axes: Sequence[Axes] | np.ndarray | None = None, title: str = "") -> Figure:
    """What each library feeds the model, and where the two inputs differ.

    ``inputs``: "timm", "hf" (1, 3, H, W) normalised and "difference" = hf - timm;
    ``configs``: {"timm": ..., "hf": ...}, each with the "mean" and "std" that undo its
    normalisation. Panels: the two inputs as images, then |difference| averaged over the
    channels, on a colour scale from 0.
    """
    fig, axes = _axes_grid(3, axes, ncols=3, size=4.0)
    for ax, key, label in zip(axes, ("timm", "hf"), ("timm: resize + centre crop", "Hugging Face: resize to H x W")):
        pixels = denormalize(inputs[key][0].detach().float(), configs[key])  # (3, H, W) in [0, 1]
        ax.imshow(pixels.permute(1, 2, 0).numpy())  # (H, W, 3)
        ax.set_axis_off()
        ax.set_title(label)
    gap = inputs["difference"][0].detach().abs().mean(dim=0)  # (H, W)
    shown = axes[2].imshow(_numpy(gap), cmap="magma", vmin=0)
    axes[2].set_axis_off()
    axes[2].set_title("|hf - timm|, mean over RGB")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, label="normalised units")
    if title:
        fig.suptitle(title)
    return fig



# ---------------- 09 training


def plot_examples(pixels: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                  axes: Sequence[Axes] | None = None, title: str = "", ncols: int = 8) -> Figure:
    """uint8 crops (n, 3, S, S) titled with their class: the data, no model involved."""
    fig, axes = _axes_grid(pixels.shape[0], axes, ncols, size=1.3)
    for index, ax in zip(range(pixels.shape[0]), axes):
        ax.imshow(pixels[index].permute(1, 2, 0).numpy())  # (S, S, 3)
        ax.set_title(class_names[int(labels[index])], fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title or "examples")
    return fig


def plot_predictions(pixels: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                     class_names: Sequence[str], *, trained: bool, axes: Sequence[Axes] | None = None,
                     title: str = "", ncols: int = 8) -> Figure:
    """uint8 crops (n, 3, S, S) titled "true -> predicted", wrong predictions in red."""
    fig, axes = _axes_grid(pixels.shape[0], axes, ncols, size=1.3)
    for index, ax in zip(range(pixels.shape[0]), axes):
        ax.imshow(pixels[index].permute(1, 2, 0).numpy())  # (S, S, 3)
        label, guess = class_names[int(labels[index])], class_names[int(predictions[index])]
        colour = {"color": "black" if guess == label else "red"} if trained else {}  # untrained: all red
        label_panel(ax, f"{label} -> {guess}", trained, fontsize=9, **colour)
        ax.set_axis_off()
    label_figure(fig, title or "predictions: true -> predicted", trained)
    return fig


def plot_rollout_digits(pixels: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], *, trained: bool,
                        uniform: float | None = None, ncols: int = 4, title: str = "") -> Figure:
    """Rollout maps (n, gh, gw) over their uint8 digits (n, 3, S, S), compared: one colour scale for all panels.

    The scale runs from 0 to the largest value of any map, with one colour bar for the
    figure on which ``uniform`` (1/N) is marked; each panel's title keeps its own max.
    """
    count = pixels.shape[0]
    fig, axes = _axes_grid(count, None, ncols, size=2.4)
    vmax = float(_numpy(maps).max())
    for index, ax in zip(range(count), axes):
        heat = _numpy(maps[index])
        plot_heatmap_overlay(_picture(pixels[index]), heat, trained=trained, vmax=vmax, colorbar=False,
                             alpha=0.5, ax=ax, title=f"{titles[index]}\nmax {float(heat.max()):.3f}")
    add_colorbar(fig, axes[0].get_images()[-1], axes[:count], "rollout weight", uniform)
    label_figure(fig, title or "attention rollout of the class token", trained)
    return fig


def _picture(pixels: torch.Tensor) -> Image.Image:
    """uint8 crop (3, S, S) -> the RGB picture, for drawing only."""
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")  # (S, S, 3)


def plot_training_curves(history: dict[str, torch.Tensor], axes: Sequence[Axes] | None = None,
                         title: str = "") -> Figure:
    """Loss and accuracy per epoch, train and test, from ``train_vit``'s history: two panels.

    A record of the training run itself (no ``trained`` keyword: there is nothing untrained to label).
    """
    fig, axes = _axes_grid(2, axes, ncols=2, size=3.6)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("test", "s-")):
            ax.plot(epochs, _numpy(history[f"{split}_{metric}"]), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title(f"accuracy\n(test, after the last epoch: {float(history['test_accuracy'][-1]):.1%})",
                      fontsize="medium")  # two short lines: side by side, long titles ran into each other
    axes[0].set_title("cross-entropy\n(train: with label smoothing)", fontsize="medium")
    fig.suptitle(title or "training curves")
    return fig


def plot_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], *, trained: bool,
                          ax: Axes | None = None, title: str = "") -> Figure:
    """Counts (C, C), rows = true class, columns = predicted, with the count in every non-empty cell."""
    ax = axes_or_new(ax, size=4.5)
    counts = _numpy(matrix)
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="test images")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            light = count > counts.max() / 2
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color="white" if light else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    label_panel(ax, title or f"confusion matrix ({int(np.trace(counts))} of {int(counts.sum())} right)", trained)
    return ax.figure


def plot_feature_embedding(points: torch.Tensor | np.ndarray, labels: torch.Tensor, class_names: Sequence[str],
                           *, trained: bool, ax: Axes | None = None, title: str = "") -> Figure:
    """A 2-D embedding (n, 2) of features (t-SNE), one colour per class, the class name at its centre."""
    ax = axes_or_new(ax, size=4.5)
    points, labels = _numpy(points), _numpy(labels)
    colours = _head_colours(len(class_names))
    for index, name in enumerate(class_names):
        chosen = points[labels == index]
        ax.scatter(chosen[:, 0], chosen[:, 1], s=8, color=colours[index], label=name)
        if len(chosen):
            ax.text(*np.median(chosen, axis=0), name, fontsize=11, weight="bold", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="x-small", markerscale=1.5, ncols=2, loc="best")
    label_panel(ax, title or "t-SNE of the class-token features", trained)
    return ax.figure


def plot_pos_embed_locality(gaps: dict[str, torch.Tensor], ax: Axes | None = None, title: str = "") -> Figure:
    """Per-epoch locality of the position embeddings: {name: (E,)} gaps of mean cosine similarity.

    Like the training curves, a record of the training run (``locality_per_epoch``), not of loaded weights.
    """
    ax = axes_or_new(ax)
    for (name, values), style in zip(gaps.items(), ("o-", "s-", "^-", "v-")):
        values = _numpy(values)
        ax.plot(np.arange(1, len(values) + 1), values, style, markersize=3, label=name)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("difference of mean cosine similarity")
    ax.legend()
    ax.set_title(title or "position-embedding locality during training")
    return ax.figure


def plot_deletion_curves(curves: dict[str, torch.Tensor], *, trained: bool, ax: Axes | None = None,
                         title: str = "") -> Figure:
    """True-class probability against the fraction of patches deleted, one (K,) curve per order.

    Curves named "random ..." are drawn thin and grey; the legend gives each curve's area.
    """
    ax = axes_or_new(ax, size=4.5)
    for name, curve in curves.items():
        values = _numpy(curve)
        fractions = np.linspace(0, 1, len(values))  # the same even steps as training.curve_area
        style = {"color": "grey", "linewidth": 0.9} if name.startswith("random") else {"linewidth": 2}
        area = np.trapezoid(values, fractions)
        ax.plot(fractions, values, "o-", markersize=3, label=f"{name}: area {area:.3f}", **style)
    ax.set_xlabel("fraction of patches deleted (most important first)")
    ax.set_ylabel("probability of the true class")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small")
    label_panel(ax, title or "deletion curves: lower area = more faithful order", trained)
    return ax.figure


def plot_randomisation_curves(curves: dict[str, torch.Tensor],
                              ylabel: str = "Spearman correlation with the trained maps", *, trained: bool,
                              ax: Axes | None = None, title: str = "") -> Figure:
    """One (L + 1,) value per randomisation step and explanation: step k = top k blocks re-initialised."""
    ax = axes_or_new(ax, size=4.5)
    for name, curve in curves.items():
        values = _numpy(curve)
        ax.plot(np.arange(len(values)), values, "o-", label=name)
    steps = len(next(iter(curves.values())))
    ax.set_xticks(np.arange(steps), ["trained"] + [f"top {k}" for k in range(1, steps)])
    ax.axhline(0 if "correlation" in ylabel else 1, color="grey", linewidth=0.8)
    low = min(-0.1, *(float(c.min()) for c in curves.values()))
    ax.set_ylim(low, max(1.05, *(1.05 * float(c.max()) for c in curves.values())))
    ax.set_xlabel("blocks re-initialised (from the top)")
    ax.set_ylabel(ylabel)
    ax.legend()
    label_panel(ax, title or "model-randomisation check", trained)
    return ax.figure


# ---------------- 10 attention explorer
# Drawn for a projector: large type, one colour bar per panel starting at 0, compared
# panels on one shared scale unless asked otherwise, and a red label on every panel when
# the weights are not known to be trained. The head panels are drawn with numpy and Pillow
# (no matplotlib layout or resampling), so a redraw stays fast.

EXPLORER_FONT_SIZE = 16
EXPLORER_DPI = 72
_STRIP_PX, _GAP_PX, _MARGIN_PX = 14, 6, 8
_RED, _BLACK, _CYAN = (214, 0, 0), (0, 0, 0), (0, 255, 255)


class HeadPanels(NamedTuple):
    picture: Image.Image              # RGB, one pixel per screen pixel
    origins: list[tuple[int, int]]    # (x, y) pixel of each panel's top-left corner
    patch_px: int                     # pixels per patch side in a panel
    vmax: list[float]                 # the top of each panel's colour scale (the bottom is 0)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Matplotlib's own DejaVu Sans, so the pictures need no system fonts."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def panel_scales(maps: torch.Tensor, vmax: float | Sequence[float] | None = None) -> list[float]:
    """The top of each panel's colour scale for maps (K, gh, gw): None shares the largest value of all
    panels (compared panels, one scale), a number is used for every panel, a sequence is one per panel."""
    K = maps.shape[0]
    if vmax is None:
        vmax = float(maps.max())
    tops = [float(vmax)] * K if isinstance(vmax, (int, float)) else [float(v) for v in vmax]
    if len(tops) != K:
        raise ValueError(f"vmax: {len(tops)} values for {K} panels")
    return [max(top, 1e-12) for top in tops]


_RESIZED: dict[tuple[int, tuple[int, int]], tuple[Image.Image, np.ndarray]] = {}  # the explorer's few crops


def _resized(picture: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``picture`` resized to ``size`` as (h, w, 3) floats in [0, 1], kept for the next redraw of the same crop."""
    key = (id(picture), size)
    kept = _RESIZED.get(key)
    if kept is None or kept[0] is not picture:  # the picture itself is kept, so its id cannot be reused
        if len(_RESIZED) >= 16:
            _RESIZED.pop(next(iter(_RESIZED)))
        kept = _RESIZED[key] = (picture, np.asarray(picture.resize(size, Image.BICUBIC), dtype=np.float32) / 255)
    return kept[1]


def _panel_bases(crop: Image.Image | Sequence[Image.Image], K: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Each panel's picture (h, w, 3) in [0, 1]: one crop for all, or one crop per panel."""
    crops = [crop] * K if isinstance(crop, Image.Image) else list(crop)
    return [_resized(picture, size) for picture in crops]


def draw_head_panels(crop: Image.Image | Sequence[Image.Image], maps: torch.Tensor,
                     query_cell: tuple[int, int] | None, heads: Sequence[int | str], title: str = "",
                     warning: str | None = None, panel_px: int = 224, ncols: int = 4, cmap: str = "inferno",
                     alpha: float = 0.55, vmax: float | Sequence[float] | None = None,
                     notes: Sequence[str] | None = None, font_size: int = EXPLORER_FONT_SIZE) -> HeadPanels:
    """One panel per map (K, gh, gw) over the crop (or one crop per panel), each with a colour bar from 0.

    ``vmax``: None (default) puts every panel on one shared scale, 0 to the largest value of
    all panels, so a near-uniform head looks pale next to a focused one; a sequence gives
    each panel its own top (see :func:`panel_scales`). ``heads`` names the panels (an int
    i: "head i"); ``notes`` adds a second line under each name (e.g. "31% on [CLS]");
    ``query_cell`` (row, col) is outlined in cyan (None: the query is a prefix token);
    ``warning`` (e.g. "UNTRAINED") goes in red into every panel title and the title. Drawn
    with numpy and Pillow, not matplotlib, so that the explorer redraws all heads well
    within its time budget.
    """
    K, gh, gw = maps.shape
    k = max(1, panel_px // max(gh, gw))
    h, w = k * gh, k * gw
    bases = _panel_bases(crop, K, (w, h))
    line, label_px = round(font_size * 1.25), round(font_size * 4.4)
    name_px = line * (2 if notes else 1) + 6
    cols, rows = min(ncols, K), math.ceil(K / ncols)
    cell_w, cell_h, top = w + _GAP_PX + _STRIP_PX + label_px, name_px + h + _GAP_PX, _title_height(title, font_size)
    pixels = np.ones((top + rows * cell_h, _MARGIN_PX + cols * cell_w, 3), np.float32)  # (height, width, 3)
    lut = colormaps[cmap]
    strip = lut(np.linspace(1, 0, h))[:, None, :3].repeat(_STRIP_PX, axis=1)  # (h, strip, 3), maximum on top
    origins = [(_MARGIN_PX + c * cell_w, top + r * cell_h + name_px) for r, c in (divmod(i, cols) for i in range(K))]
    values, tops = _numpy(maps).astype(np.float32), panel_scales(maps, vmax)  # (K, gh, gw), K
    for (x, y), heat, base, scale in zip(origins, values, bases, tops):
        colours = lut(np.clip(heat / scale, 0, 1))[..., :3]  # (gh, gw, 3), 0 -> bottom colour
        colours = colours.repeat(k, axis=0).repeat(k, axis=1)  # (h, w, 3)
        pixels[y:y + h, x:x + w] = (1 - alpha) * base + alpha * colours
        pixels[y:y + h, x + w + _GAP_PX:x + w + _GAP_PX + _STRIP_PX] = strip
    picture = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), mode="RGB")  # rounded, in one pass fewer
    if title:
        picture = _with_title(picture, f"{warning} - {title}" if warning else title, font_size, top,
                              _RED if warning else _BLACK)
    draw = ImageDraw.Draw(picture)
    names = [f"head {head}" if isinstance(head, int) else head for head in heads]
    _label_head_panels(draw, origins, tops, names, notes, query_cell, (h, w, k), warning, font_size)
    return HeadPanels(picture, origins, k, tops)


def _title_height(title: str, font_size: int) -> int:
    return (title.count("\n") + 1) * round(font_size * 1.4) + 10 if title else 0


def _with_title(picture: Image.Image, title: str, font_size: int, top: int, colour: tuple) -> Image.Image:
    """``title`` (one or more lines) centred in the top ``top`` pixels; the picture widened to fit it."""
    font = _font(font_size + 2)
    width = max(picture.width, max(int(font.getlength(text)) for text in title.split("\n")) + 2 * _MARGIN_PX)
    if width > picture.width:  # a narrow one-head panel under a long title
        wider = Image.new("RGB", (width, picture.height), (255, 255, 255))
        wider.paste(picture, (0, 0))
        picture = wider
    ImageDraw.Draw(picture).multiline_text((width / 2, 4), title, fill=colour, font=font, anchor="ma",
                                           align="center", spacing=round(font_size * 0.4))
    return picture


def _label_head_panels(draw: ImageDraw.ImageDraw, origins: list[tuple[int, int]], tops: list[float],
                       names: Sequence[str], notes: Sequence[str] | None, query_cell: tuple[int, int] | None,
                       panel: tuple[int, int, int], warning: str | None, font_size: int) -> None:
    """Panel names (and notes), each colour strip's scale (0 at the bottom, its top value above), the query box."""
    h, w, k = panel
    colour, font, small = (_RED if warning else _BLACK), _font(font_size), _font(font_size - 2)
    line = round(font_size * 1.25)
    for index, ((x, y), top, name) in enumerate(zip(origins, tops, names)):
        name_y = y - 4 - (line if notes else 0)
        draw.text((x, name_y), f"{warning} {name}" if warning else name, fill=colour, font=font, anchor="ld")
        if notes:
            draw.text((x, y - 4), notes[index], fill=colour, font=font, anchor="ld")
        label_x = x + w + _GAP_PX + _STRIP_PX + 4
        draw.text((label_x, y), f"{top:.3g}", fill=_BLACK, font=small, anchor="lt")
        draw.text((label_x, y + h), "0", fill=_BLACK, font=small, anchor="ld")
        if query_cell is not None:
            row, col = query_cell
            draw.rectangle((x + col * k, y + row * k, x + (col + 1) * k - 1, y + (row + 1) * k - 1),
                           outline=_CYAN, width=3)


def plot_head_panels(panels: HeadPanels, ax: Axes | None = None, title: str = "") -> Figure:
    """The head panels' picture as a matplotlib Figure (one picture pixel per screen pixel without ``ax``)."""
    if ax is None:
        width, height = panels.picture.size
        fig = Figure(figsize=(width / EXPLORER_DPI, height / EXPLORER_DPI), dpi=EXPLORER_DPI)
        ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(panels.picture, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def plot_rollout_with_scale(crop: Image.Image, rollout_grid: torch.Tensor, ax: Axes | None = None,
                            title: str = "class-token rollout", warning: str | None = None,
                            cmap: str = "inferno", alpha: float = 0.55) -> Figure:
    """The class token's rollout (gh, gw) over the crop, with a colour bar from 0 to its maximum."""
    ax = axes_or_new(ax, size=5.0)
    heat = _numpy(rollout_grid)
    width, height = crop.size
    ax.imshow(crop)
    image = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, width, height, 0), interpolation="nearest",
                      vmin=0, vmax=float(heat.max()))
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.8, label="rollout weight")
    bar.solids.set_alpha(1.0)  # the scale in full colour, not washed out like the overlay
    ax.set_axis_off()
    ax.set_title(f"{warning}\n{title}" if warning else title, color="red" if warning else "black")
    return ax.figure


def plot_explorer_summary(crop: Image.Image, rollout_grid: torch.Tensor, topk: TopK, image: int = 0,
                          warning: str | None = None, title: str = "",
                          rollout_title: str = "class-token rollout") -> Figure:
    """What does not change with layer, head or query: the class token's rollout and the top-5."""
    with rc_context({"font.size": EXPLORER_FONT_SIZE}):
        fig = Figure(figsize=(13, 4.6), dpi=EXPLORER_DPI, layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=(1, 1.3))
        plot_rollout_with_scale(crop, rollout_grid, ax=left, warning=warning, title=rollout_title)
        untrained = warning == "UNTRAINED"  # plot_top_k labels and watermarks that case itself
        other = warning if warning and not untrained else None
        plot_top_k(topk, image=image, trained=not untrained, ax=right, title=f"{other}\ntop-5" if other else "top-5")
        if other:
            right.title.set_color("red")
        if title:
            fig.suptitle(title)
    return fig


def patch_picker_image(crop: Image.Image, grid: tuple[int, int], query_cell: tuple[int, int] | None,
                      patch_px: int = 24) -> Image.Image:
    """The crop enlarged with its patch grid and the query patch outlined: the picture one clicks on."""
    gh, gw = grid
    picture = crop.resize((gw * patch_px, gh * patch_px), Image.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for i in range(1, gh):
        draw.line([(0, i * patch_px), (picture.width, i * patch_px)], fill=(255, 255, 255), width=1)
    for j in range(1, gw):
        draw.line([(j * patch_px, 0), (j * patch_px, picture.height)], fill=(255, 255, 255), width=1)
    if query_cell is not None:
        row, col = query_cell
        box = (col * patch_px, row * patch_px, (col + 1) * patch_px - 1, (row + 1) * patch_px - 1)
        draw.rectangle(box, outline=(0, 255, 255), width=3)
    return picture


def image_bytes(picture: Image.Image, format: str = "png", quality: int = 90) -> bytes:
    """A picture as PNG or JPEG bytes for an image widget (PNG lightly compressed: speed over size;
    zlib's run-length strategy encodes the flat patches of a heatmap about a quarter faster than the default)."""
    out = io.BytesIO()
    if format == "jpeg":
        picture.convert("RGB").save(out, format="JPEG", quality=quality)
    else:
        picture.save(out, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return out.getvalue()


def figure_bytes(fig: Figure, format: str = "png") -> bytes:
    """The figure rendered by Agg, as PNG or JPEG bytes."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return image_bytes(Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()), format)


# ---------------- 11 fine-tuning


def plot_accuracy_with_spread(x: torch.Tensor | np.ndarray, accuracies: dict[str, torch.Tensor], *, xlabel: str,
                              ax: Axes | None = None, title: str = "", log_x: bool = True,
                              tick_labels: Sequence[str] | None = None) -> Figure:
    """Test accuracy against ``x`` (X,), one line per entry of (X, seeds) accuracies: mean, bars min to max.

    Measured tables of runs trained here (no ``trained`` keyword: nothing untrained is drawn).
    The y axis runs from 0 to 1, so lines and gaps are read on one honest scale.
    """
    ax = axes_or_new(ax, size=4.6)
    positions = _numpy(torch.as_tensor(x)).astype(float)
    for offset, (name, values) in enumerate(accuracies.items()):
        table = _numpy(values)
        mean, low, high = table.mean(axis=1), table.min(axis=1), table.max(axis=1)
        shifted = positions * (1 + 0.03 * (offset - 1)) if log_x else positions + 0.1 * (offset - 1)
        ax.errorbar(shifted, mean, yerr=[mean - low, high - mean], fmt="o-", capsize=3, label=f"{name}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(positions, tick_labels if tick_labels is not None else [f"{p:g}" for p in positions])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (mean; bars: min to max over seeds)")
    ax.legend(loc="lower right")
    ax.set_title(title)
    return ax.figure


# ---------------- 12 explanations


def plot_explanations(crops: Sequence[Image.Image], maps: dict[str, torch.Tensor], *, trained: bool,
                      weight_free: Sequence[str] = (), size: float = 1.9, title: str = "") -> Figure:
    """One row per image, one column per method: each (B, gh, gw) map over its crop.

    A column shares one colour scale, 0 to the column's maximum, with its colour bar under
    the last row; methods in ``weight_free`` (baselines that never read the weights) are
    not labelled untrained.
    """
    rows, cols = len(crops), len(maps)
    fig, axes = new_axes(rows, cols, size=size)
    for col, (method, heat) in enumerate(maps.items()):
        vmax = float(heat.max())
        for row, crop in enumerate(crops):
            plot_heatmap_overlay(crop, heat[row], trained=trained or method in weight_free, vmax=vmax,
                                 colorbar=row == rows - 1, label="importance", ax=axes[row, col],
                                 title=method if row == 0 else "")
    label_figure(fig, title or "explanations, one colour scale per column", trained)
    return fig
