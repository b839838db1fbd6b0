"""Figures of the walk-through steps: they draw what they are given, into given axes, and cannot mislead.

Heatmaps start at 0 with a colour bar and share a scale where panels are compared; row 0
is at the top of the image; numbering is 0-based; untrained weights are labelled in red
on every title and as a watermark on every weight-dependent panel.
"""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from vit_inspect import top_k  # noqa: E402
from vit_inspect import plotting  # noqa: E402
from vit_inspect.plotting import (UNTRAINED_COLOUR, new_axes, plot_attention_distance,  # noqa: E402
                                  plot_attention_mistakes, plot_confusion_matrix, plot_deletion_curves,
                                  plot_feature_embedding, plot_filter_components, plot_gelu, plot_heatmap_overlay,
                                  plot_patch_grid, plot_pos_embed_similarity, plot_predictions, plot_query_attention,
                                  plot_randomisation_curves, plot_residual_norms, plot_rollout_overlay,
                                  plot_rollout_vs_brightness, plot_top_k, untrained_title)

from .mutation import fails, passes  # noqa: E402


@pytest.fixture(scope="module")
def crop():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if hasattr(ax, "_colorbar")]


def panels(fig) -> list:
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and ax.get_images()]


def watermarked(ax) -> bool:
    return any(isinstance(t, Text) and t.get_text() == "UNTRAINED" and t.get_color() == UNTRAINED_COLOUR
               for t in ax.texts)


def test_similarity_mosaic_is_one_image_with_one_colour_scale():
    similarity = torch.rand(4, 5, 4, 5) * 2 - 1
    fig, axes = new_axes(1, 2)
    returned = plot_pos_embed_similarity(similarity, trained=True, ax=axes[0, 1], title="T")
    assert returned is fig
    images = axes[0, 1].get_images()
    assert len(images) == 1
    assert images[0].get_clim() == (-1, 1)
    mosaic = np.ma.filled(images[0].get_array(), np.nan)
    assert mosaic.shape == (4 * 5 - 1, 5 * 6 - 1)
    assert np.allclose(mosaic[5:9, 12:17], similarity[1, 2].numpy())  # tile (1, 2) after 1-pixel gaps
    assert axes[0, 1].get_title() == "T"
    assert [t.get_text() for t in axes[0, 1].get_xticklabels()] == ["0", "1", "2", "3", "4"]
    assert [t.get_text() for t in axes[0, 1].get_yticklabels()] == ["0", "1", "2", "3"]


def test_patch_grid_shows_every_patch_of_the_crop(crop):
    fig = plot_patch_grid(crop, 16, gap=2)
    mosaic = fig.axes[0].get_images()[0].get_array()
    assert mosaic.shape == (4 * 18 - 2, 4 * 18 - 2, 3)
    assert np.allclose(mosaic[18:34, 36:52], np.asarray(crop)[16:32, 32:48] / 255)


def test_filter_components_are_stretched_one_by_one():
    components = torch.randn(5, 3, 4, 4)
    fig = plot_filter_components(components, trained=True, ncols=3)
    mosaic = fig.axes[0].get_images()[0].get_array()
    assert mosaic.shape == (2 * 6 - 2, 3 * 6 - 2, 3)
    first = mosaic[:4, :4]
    assert np.isclose(first.min(), 0) and np.isclose(first.max(), 1)


def test_query_attention_heads_share_one_scale_from_zero_with_one_colour_bar(crop):
    maps = torch.rand(3, 4, 4) * torch.tensor([1.0, 0.5, 0.1])[:, None, None]
    fig, axes = new_axes(1, 3)
    assert plot_query_attention(crop, maps, (1, 2), trained=True, uniform=0.05, axes=axes) is fig
    for head, ax in enumerate(axes.ravel()):
        heat = ax.get_images()[1]
        assert np.allclose(heat.get_array(), maps[head].numpy())
        assert heat.get_clim() == pytest.approx((0.0, float(maps.max())))  # one scale, from 0
        assert ax.get_title() == f"head {head}: max {float(maps[head].max()):.3f}"  # 0-based, own max
        assert len(ax.patches) == 1  # the query patch outline
        assert not watermarked(ax)
    bars = colorbars(fig)
    assert len(bars) == 1 and "0.0500" in bars[0].get_ylabel()
    assert isinstance(plot_query_attention(crop, torch.rand(5, 4, 4), trained=True), Figure)


@pytest.mark.parametrize("draw", [
    lambda crop: plot_query_attention(crop, torch.rand(3, 4, 4), None, trained=False, title="class token"),
    lambda crop: plot_attention_mistakes(crop, {"correct": torch.rand(4, 4), "no_softmax": torch.randn(4, 4)},
                                         trained=False),
    lambda crop: plot_rollout_overlay(crop, torch.rand(4, 4), trained=False),
    lambda crop: plot_heatmap_overlay(crop, torch.rand(4, 4), trained=False, title="T"),
    lambda crop: plot_pos_embed_similarity(torch.rand(2, 2, 2, 2), trained=False),
    lambda crop: plot_filter_components(torch.randn(3, 3, 4, 4), trained=False),
    lambda crop: plot_top_k(top_k(torch.randn(1, 10), k=3), trained=False),
    lambda crop: plot_attention_distance(torch.rand(4, 3) * 100, 50.0, trained=False),
    lambda crop: plot_residual_norms(torch.rand(3, 1, 5), 1, trained=False),
    lambda crop: plot_rollout_vs_brightness(torch.rand(4, 4), torch.rand(4, 4), 0.5, trained=False),
    lambda crop: plot_predictions(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]),
                                  torch.tensor([0, 0]), ["a", "b"], trained=False),
    lambda crop: plot_confusion_matrix(torch.tensor([[3, 1], [0, 2]]), ["a", "b"], trained=False),
    lambda crop: plot_feature_embedding(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]), ["a", "b"], trained=False),
    lambda crop: plot_deletion_curves({"rollout": torch.tensor([1.0, 0.2])}, trained=False),
    lambda crop: plot_randomisation_curves({"rollout": torch.tensor([1.0, 0.5])}, trained=False),
], ids=["query", "mistakes", "rollout", "overlay", "similarity", "filters", "top-k", "distance", "norms", "scatter",
        "predictions", "confusion", "t-SNE", "deletion", "randomisation"])
def test_untrained_weights_are_labelled_in_red_on_every_panel(crop, draw):
    fig = draw(crop)
    drawn = [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and ax.has_data()]
    assert drawn
    for ax in drawn:
        assert watermarked(ax), "a cropped panel must keep the untrained label"
        assert ax.get_title().startswith("UNTRAINED weights") and ax.title.get_color() == UNTRAINED_COLOUR
    suptitle = fig._suptitle
    if suptitle is not None:
        assert suptitle.get_text().startswith("UNTRAINED weights") and suptitle.get_color() == UNTRAINED_COLOUR


def test_untrained_title_is_added_once():
    once = untrained_title("x", trained=False)
    assert once == "UNTRAINED weights - x" and untrained_title(once, trained=False) == once
    assert untrained_title("x", trained=True) == "x"


def test_mistakes_share_one_scale_for_weights_and_negative_values_a_scale_centred_on_zero(crop):
    maps = {"correct": torch.rand(4, 4) * 0.02, "no_softmax": torch.randn(4, 4),
            "divide_after_softmax": torch.rand(4, 4) * 0.02 / 27.7}
    fig = plot_attention_mistakes(crop, maps, {"no_softmax": 0.5}, trained=True)
    assert len(colorbars(fig)) == 3
    drawn = panels(fig)
    titles = [ax.get_title() for ax in drawn]
    assert titles[0].startswith("correct") and "50.0%" in titles[1]
    low, high = drawn[1].get_images()[1].get_clim()
    assert low < 0 and low == -high == -float(maps["no_softmax"].abs().max())
    weights_max = max(float(maps["correct"].max()), float(maps["divide_after_softmax"].max()))
    assert drawn[0].get_images()[1].get_clim() == pytest.approx((0.0, weights_max))
    assert drawn[2].get_images()[1].get_clim() == pytest.approx((0.0, weights_max)), \
        "maps of weights are compared on one scale: the 28x flatter softmax looks flatter"
    own = panels(plot_attention_mistakes(crop, maps, trained=True, shared=False))
    assert own[2].get_images()[1].get_clim()[1] < 0.001  # on request, its own 28x smaller scale


def test_rollout_starts_at_zero_with_a_shared_scale_and_uniform_on_the_bar(crop):
    grid = torch.rand(4, 4) * 0.01
    fig = plot_rollout_overlay(crop, grid, trained=True, vmax=0.05, uniform=1 / 17)
    heat = fig.axes[0].get_images()[1]
    assert heat.get_clim() == (0.0, 0.05)
    assert np.allclose(heat.get_array(), grid.numpy())  # the values themselves, not stretched to the max
    assert f"{float(grid.max()):.4f}" in fig.axes[0].get_title()
    bar = colorbars(fig)[0]
    assert any(np.allclose(line.get_xdata(), 1 / 17) for line in bar.get_lines())  # horizontal bar below the panel
    assert "0.0588" in bar.get_xlabel()


def check_row_zero_at_the_top():
    """A map whose row 0 alone is hot, over a black crop: the top band of the drawn panel is the bright one."""
    black = Image.new("RGB", (64, 64))
    heat = np.zeros((4, 4))
    heat[0] = 1.0
    fig = plotting.plot_query_attention(black, torch.tensor(heat)[None], None, trained=True)
    fig.set_dpi(50)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    box = fig.axes[0].get_window_extent()
    height = pixels.shape[0]
    top, bottom = int(height - box.y1), int(height - box.y0)  # canvas rows grow downwards
    left, right = int(box.x0), int(box.x1)
    band = (bottom - top) // 4
    top_band = pixels[top + 2:top + band - 2, left + 2:right - 2].mean()
    bottom_band = pixels[bottom - band + 2:bottom - 2, left + 2:right - 2].mean()
    assert top_band > bottom_band + 50, (top_band, bottom_band)


REAL_OVERLAY = plot_heatmap_overlay


def upside_down_overlay(crop, heat, **kwargs):
    return REAL_OVERLAY(crop, np.flipud(plotting._numpy(heat)), **kwargs)


def transposed_overlay(crop, heat, **kwargs):  # rows drawn as columns
    return REAL_OVERLAY(crop, plotting._numpy(heat).T, **kwargs)


@pytest.mark.parametrize("bug", [upside_down_overlay, transposed_overlay])
def test_mutation_flipped_overlay_is_caught(monkeypatch, bug):
    passes(check_row_zero_at_the_top)
    monkeypatch.setattr(plotting, "plot_heatmap_overlay", bug)
    fails(check_row_zero_at_the_top)


def test_residual_norms_distance_and_gelu_plots():
    norms = torch.rand(13, 1, 197)
    ax = plot_residual_norms(norms, num_prefix_tokens=1, trained=True).axes[0]
    lines = ax.get_lines()
    assert np.allclose(lines[0].get_ydata(), norms[:, 0, 0].numpy())
    assert np.allclose(lines[1].get_ydata(), norms[:, 0, 1:].mean(dim=1).numpy())
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["z0", "0", "1"]  # after block 0, from 0
    ax = plot_attention_distance(torch.rand(12, 3) * 100, 80.0, trained=True).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == ["head 0", "head 1", "head 2"]
    x = torch.linspace(-3, 3, 7)
    fig = plot_gelu(x, x, x + 1e-3)
    assert "1.0e-03" in fig.axes[0].get_title()


# ---------------------------------------------------------------- 09 training

def test_training_curves_draw_the_history():
    from vit_inspect.plotting import plot_training_curves

    history = {"train_loss": torch.tensor([2.0, 1.0, 0.5]), "test_loss": torch.tensor([2.1, 1.2, 0.7]),
               "train_accuracy": torch.tensor([0.2, 0.6, 0.9]), "test_accuracy": torch.tensor([0.1, 0.5, 0.85])}
    fig, axes = new_axes(1, 2)
    assert plot_training_curves(history, axes=axes) is fig
    loss, accuracy = axes[0, 0].get_lines(), axes[0, 1].get_lines()
    assert np.allclose(loss[1].get_ydata(), [2.1, 1.2, 0.7]) and np.allclose(loss[0].get_xdata(), [1, 2, 3])
    assert np.allclose(accuracy[1].get_ydata(), [0.1, 0.5, 0.85]) and "85.0%" in axes[0, 1].get_title()


def test_confusion_matrix_counts_from_zero_with_colour_bar():
    from vit_inspect.plotting import plot_confusion_matrix

    matrix = torch.tensor([[5, 1], [0, 4]])
    fig = plot_confusion_matrix(matrix, ["a", "b"], trained=True)
    ax = fig.axes[0]
    assert ax.get_images()[0].get_clim() == (0, 5) and len(fig.axes) == 2  # the matrix and its colour bar
    assert sorted(t.get_text() for t in ax.texts) == ["1", "4", "5"]  # empty cells stay blank
    assert "9 of 10" in ax.get_title()


def test_feature_embedding_colours_each_class():
    from vit_inspect.plotting import plot_feature_embedding

    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    fig = plot_feature_embedding(points, torch.tensor([0, 0, 1]), ["zero", "one"], trained=True)
    collections = fig.axes[0].collections
    assert len(collections) == 2 and np.allclose(collections[1].get_offsets(), [[5.0, 5.0]])


def test_deletion_curves_legend_gives_the_areas():
    from vit_inspect import curve_area
    from vit_inspect.plotting import plot_deletion_curves

    curves = {"rollout": torch.tensor([1.0, 0.5, 0.0]), "random (seed 0)": torch.tensor([1.0, 1.0, 0.0])}
    fig = plot_deletion_curves(curves, trained=True)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"rollout: area {float(curve_area(curves['rollout'])):.3f}", "random (seed 0): area 0.750"]
    assert np.allclose(fig.axes[0].get_lines()[0].get_xdata(), [0, 0.5, 1])


def test_randomisation_curves_and_locality_plots():
    from vit_inspect.plotting import plot_pos_embed_locality, plot_randomisation_curves

    curves = {"rollout": torch.tensor([1.0, 0.9, 0.2]), "last-layer attention": torch.tensor([1.0, 0.1, -0.2])}
    ax = plot_randomisation_curves(curves, trained=True).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["trained", "top 1", "top 2"]
    assert np.allclose(ax.get_lines()[1].get_ydata(), [1.0, 0.1, -0.2]) and ax.get_ylim()[0] <= -0.2
    gaps = {"neighbours - far patches": torch.tensor([0.0, 0.3])}
    line = plot_pos_embed_locality(gaps).axes[0].get_lines()[0]
    assert np.allclose(line.get_xdata(), [1, 2]) and np.allclose(line.get_ydata(), [0.0, 0.3])


def test_predictions_mark_wrong_ones_in_red():
    from vit_inspect.plotting import plot_examples, plot_predictions

    pixels = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    fig = plot_predictions(pixels, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), ["a", "b"], trained=True, ncols=3)
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes]
    assert titles == [("a -> a", "black"), ("b -> b", "black"), ("b -> a", "red")]
    fig = plot_examples(pixels, torch.tensor([0, 1, 1]), ["a", "b"], ncols=3)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "b"] and not fig.axes[0].texts

def test_preprocessing_comparison_shows_both_inputs_and_their_difference_from_0():
    from vit_inspect.plotting import plot_preprocessing_comparison

    generator = torch.Generator().manual_seed(0)
    timm_input, hf_input = (torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1 for _ in range(2))
    inputs = {"timm": timm_input, "hf": hf_input, "difference": hf_input - timm_input}
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    fig = plot_preprocessing_comparison(inputs, {"timm": config, "hf": config}, title="T")
    shown = [ax.get_images()[0].get_array() for ax in fig.axes[:3]]
    assert np.allclose(shown[0], ((timm_input[0] + 1) / 2).permute(1, 2, 0).numpy())
    assert np.allclose(shown[1], ((hf_input[0] + 1) / 2).permute(1, 2, 0).numpy())
    assert np.allclose(shown[2], (hf_input - timm_input)[0].abs().mean(dim=0).numpy())
    assert fig.axes[2].get_images()[0].get_clim()[0] == 0
    assert len(fig.axes) == 4, "three panels and the colour bar"


def test_rollout_vs_brightness_draws_one_dot_per_patch():
    brightness, rollout = torch.rand(3, 5), torch.rand(3, 5)
    ax = plot_rollout_vs_brightness(brightness, rollout, -0.25, trained=True).axes[0]
    offsets = ax.collections[0].get_offsets()
    assert np.allclose(offsets, np.stack([brightness.ravel(), rollout.ravel()], axis=1))
    assert "r = -0.25" in ax.get_title()


# ---------------------------------------------------------------- 09 training: one scale, nothing hidden or overlapping

def drawn(fig):
    """The figure laid out and drawn, so that text extents are final."""
    FigureCanvasAgg(fig).draw()
    return fig


def overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def digits(count: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def check_rollout_digits_share_one_scale(plot) -> None:
    maps = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.2, 1, 8)[:, None, None]
    fig = drawn(plot(digits(), maps, [f"digit {i}" for i in range(8)], trained=True, uniform=1 / 65))
    heats = [ax.get_images()[1] for ax in panels(fig)]
    assert len(heats) == 8 and {heat.get_clim() for heat in heats} == {(0.0, float(maps.max()))}, \
        "every panel on one scale, from 0 to the largest value of any map"
    assert len(colorbars(fig)) == 1, "one colour bar for the compared panels"


def rollout_digits_each_on_its_own_scale(pixels, maps, titles, *, trained, uniform=None, ncols=4, title=""):
    fig, axes = plotting._axes_grid(len(maps), None, ncols, size=2.4)
    for index, ax in enumerate(axes[:len(maps)]):
        plot_heatmap_overlay(plotting._picture(pixels[index]), maps[index], trained=trained, ax=ax)
    return fig


def test_rollout_digits_share_one_scale_with_uniform_marked_and_ticks_apart():
    passes(check_rollout_digits_share_one_scale, plotting.plot_rollout_digits)
    fails(check_rollout_digits_share_one_scale, rollout_digits_each_on_its_own_scale)
    fig = drawn(plotting.plot_rollout_digits(digits(), torch.rand(8, 8, 8) * 0.05, [str(i) for i in range(8)],
                                             trained=True, uniform=1 / 65))
    bar = colorbars(fig)[0]
    assert any(np.allclose(line.get_ydata(), 1 / 65) for line in bar.get_lines()), "uniform 1/N marked on the bar"
    ticks = [label.get_window_extent() for label in bar.get_yticklabels() if label.get_text()]
    assert len(ticks) >= 3 and not any(overlap(a, b) for a, b in zip(ticks, ticks[1:])), "tick labels apart"
    panel = panels(fig)[0].get_window_extent()
    assert panel.width >= 120 and panel.height >= 120, "digits large enough to see (pixels at the default dpi)"


def test_training_curve_titles_do_not_run_into_each_other():
    history = {"train_loss": torch.tensor([2.0, 1.0]), "test_loss": torch.tensor([2.1, 1.2]),
               "train_accuracy": torch.tensor([0.2, 0.9]), "test_accuracy": torch.tensor([0.1, 0.975])}
    fig = drawn(plotting.plot_training_curves(history, title="a long title for the small ViT on digits"))
    left, right = (ax.title.get_window_extent() for ax in fig.axes[:2])
    assert not overlap(left, right), "the two panel titles overlap"
    suptitle = fig._suptitle.get_window_extent()
    assert not overlap(left, suptitle) and not overlap(right, suptitle), "the panel titles clear the figure's title"
    width = fig.bbox.width
    assert 0 <= left.x0 and right.x1 <= width, "titles stay inside the figure"
    assert "97.5%" in fig.axes[1].get_title()


def test_attention_distance_has_whole_block_ticks_and_hides_no_dot():
    values = torch.full((4, 4), 16.0)  # every head at the same distance in every block: the worst case
    ax = drawn(plot_attention_distance(values, 16.0, trained=True)).axes[0]
    shown = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
    assert shown == [0, 1, 2, 3], "ticks at the blocks, 0-based, no fractions"
    dots = np.concatenate([collection.get_offsets() for collection in ax.collections])  # (L * H, 2)
    assert len({tuple(np.round(dot, 6)) for dot in dots}) == 16, "every head's dot at its own place"
    assert np.allclose(np.round(dots[:, 0]), np.repeat(np.arange(4)[None], 4, axis=0).ravel()), \
        "each dot beside its own block"
    legend = ax.get_legend().get_window_extent()
    assert not overlap(legend, ax.get_window_extent()), "the legend sits beside the axes, over no dot"
    wide = drawn(plot_attention_distance(torch.rand(12, 12) * 100, 80.0, trained=True)).axes[0]
    assert all(float(tick).is_integer() for tick in wide.get_xticks()), "12 blocks: whole-number ticks"


def test_top_k_names_stay_readable_over_the_untrained_watermark():
    ax = plot_top_k(top_k(torch.randn(1, 10), k=3), trained=False).axes[0]
    names = [t for t in ax.texts if t.get_text() != "UNTRAINED"]
    mark = next(t for t in ax.texts if t.get_text() == "UNTRAINED")
    assert len(names) == 3 and all(t.get_zorder() > mark.get_zorder() for t in names), "names drawn above the mark"
