"""Every figure of the suite, from already-computed tensors. Nothing here runs a model.

Each function draws into ``ax`` (or ``axes``) when given one, for composite figures such
as the CLI report, and returns the matplotlib Figure. Sections follow the notebooks.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .labels import TopK


# ---------------- shared


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


def plot_filter_components(components: torch.Tensor, ax: Axes | None = None, title: str = "",
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
    ax.set_title(title or f"first {k} principal components of the patch-embedding filters")
    return ax.figure


# ---------------- 02 position embeddings


def plot_pos_embed_similarity(similarity: torch.Tensor, ax: Axes | None = None, title: str = "") -> Figure:
    """The (gh, gw, gh, gw) cosine similarities as a gh x gw mosaic of gh x gw tiles.

    Tile (r, c) shows how similar the position embedding of patch (r, c) is to every
    other patch's; one axes, one shared colour scale from -1 to 1.
    """
    ax = axes_or_new(ax, size=6.0)
    gh, gw = similarity.shape[:2]
    ax.set_facecolor("white")
    image = ax.imshow(_mosaic(similarity.detach().float().numpy(), gap=1), cmap="viridis",
                      vmin=-1, vmax=1, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
    ax.set_xticks([(gw + 1) * c + gw / 2 - 0.5 for c in range(gw)], [str(c + 1) for c in range(gw)], fontsize=7)
    ax.set_yticks([(gh + 1) * r + gh / 2 - 0.5 for r in range(gh)], [str(r + 1) for r in range(gh)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title or "position embedding similarity", fontsize=10)
    return ax.figure


# ---------------- 03 attention by hand


def plot_query_attention(crop: Image.Image, maps: torch.Tensor, query_cell: tuple[int, int] | None = None,
                         axes: Sequence[Axes] | None = None, title: str = "", ncols: int = 4) -> Figure:
    """One panel per head: a query's attention (H, gh, gw) over the key patches, on the crop.

    ``query_cell`` (row, col) is outlined in cyan; None means the query is the class token.
    """
    H, gh, _ = maps.shape
    fig, axes = _axes_grid(H, axes, ncols, size=2.6)
    patch_size = crop.size[1] // gh
    for head, ax in zip(range(H), axes):
        heat = maps[head].detach().float().numpy()
        plot_heatmap_overlay(crop, heat, ax=ax, title=f"head {head + 1} (max {heat.max():.2f})")
        if query_cell is not None:
            _mark_patch(ax, query_cell, patch_size)
    query = "class token" if query_cell is None else f"patch (row {query_cell[0]}, col {query_cell[1]})"
    fig.suptitle(title or f"attention of {query} over the key patches")
    return fig


def plot_attention_mistakes(crop: Image.Image, maps: dict[str, torch.Tensor], errors: dict[str, float] | None = None,
                            query_cell: tuple[int, int] | None = None, axes: Sequence[Axes] | None = None,
                            title: str = "") -> Figure:
    """Side by side: the correct map and each mistake's map ({name: (gh, gw)}) for one head/query.

    ``errors`` ({name: relative error of the block output}) goes into the panel titles.
    """
    fig, axes = _axes_grid(len(maps), axes, ncols=len(maps), size=3.0)
    gh = next(iter(maps.values())).shape[0]
    for (name, heat), ax in zip(maps.items(), axes):
        error = f"\nout off by {errors[name]:.0%}" if errors and name in errors else ""
        plot_heatmap_overlay(crop, heat.detach().float().numpy(), ax=ax, title=f"{name}{error}")
        if query_cell is not None:
            _mark_patch(ax, query_cell, crop.size[1] // gh)
    fig.suptitle(title or "correct attention vs the course's mistakes")
    return fig


# ---------------- 04 encoder stack


def plot_residual_norms(norms: torch.Tensor, num_prefix_tokens: int, image: int = 0, ax: Axes | None = None,
                        title: str = "") -> Figure:
    """Norm of the residual stream per layer (L+1, B, N): class token vs mean over patches."""
    ax = axes_or_new(ax)
    norms = norms[:, image].detach().float()  # (L+1, N)
    layers = np.arange(norms.shape[0])
    ax.plot(layers, norms[:, 0].numpy(), "o-", label="class token")
    ax.plot(layers, norms[:, num_prefix_tokens:].mean(dim=1).numpy(), "s-", label="patch tokens (mean)")
    ax.set_xticks(layers, ["z0"] + [str(i) for i in layers[1:]])
    ax.set_xlabel("after block")
    ax.set_ylabel("L2 norm of the residual stream")
    ax.legend()
    ax.set_title(title or "residual stream norm per layer")
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


# ---------------- 06 attention maps


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


# ---------------- 09 training


def plot_examples(pixels: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                  predictions: torch.Tensor | None = None, axes: Sequence[Axes] | None = None, title: str = "",
                  ncols: int = 8) -> Figure:
    """uint8 crops (n, 3, S, S) with their class; with ``predictions``, wrong ones titled in red."""
    n = pixels.shape[0]
    fig, axes = _axes_grid(n, axes, ncols, size=1.3)
    for index, ax in zip(range(n), axes):
        ax.imshow(pixels[index].permute(1, 2, 0).numpy())  # (S, S, 3)
        label = class_names[int(labels[index])]
        if predictions is None:
            ax.set_title(label, fontsize=9)
        else:
            guess = class_names[int(predictions[index])]
            ax.set_title(f"{label} -> {guess}", fontsize=9, color="black" if guess == label else "red")
        ax.set_axis_off()
    fig.suptitle(title or "examples")
    return fig


def plot_training_curves(history: dict[str, torch.Tensor], axes: Sequence[Axes] | None = None,
                         title: str = "") -> Figure:
    """Loss and accuracy per epoch, train and test, from ``train_vit``'s history: two panels."""
    fig, axes = _axes_grid(2, axes, ncols=2, size=3.6)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("test", "s-")):
            ax.plot(epochs, _numpy(history[f"{split}_{metric}"]), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title(f"test accuracy after the last epoch: {float(history['test_accuracy'][-1]):.1%}")
    axes[0].set_title("cross-entropy (train: with label smoothing)")
    fig.suptitle(title or "training curves")
    return fig


def plot_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], ax: Axes | None = None,
                          title: str = "") -> Figure:
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
    ax.set_title(title or f"confusion matrix ({int(np.trace(counts))} of {int(counts.sum())} right)")
    return ax.figure


def plot_feature_embedding(points: torch.Tensor | np.ndarray, labels: torch.Tensor, class_names: Sequence[str],
                           ax: Axes | None = None, title: str = "") -> Figure:
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
    ax.set_title(title or "t-SNE of the class-token features")
    return ax.figure


def plot_pos_embed_locality(gaps: dict[str, torch.Tensor], ax: Axes | None = None, title: str = "") -> Figure:
    """Per-epoch locality of the position embeddings: {name: (E,)} gaps of mean cosine similarity."""
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


def plot_deletion_curves(curves: dict[str, torch.Tensor], ax: Axes | None = None, title: str = "") -> Figure:
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
    ax.set_title(title or "deletion curves: lower area = more faithful order")
    return ax.figure


def plot_randomisation_curves(curves: dict[str, torch.Tensor], ylabel: str = "Spearman correlation with the trained maps",
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
    ax.set_title(title or "model-randomisation check")
    return ax.figure
