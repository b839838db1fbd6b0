"""Figures of the walk-through steps: they draw what they are given, into given axes."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from vit_inspect.plotting import (new_axes, plot_attention_mistakes, plot_filter_components, plot_gelu,  # noqa: E402
                                  plot_patch_grid, plot_pos_embed_similarity, plot_query_attention,
                                  plot_residual_norms)


@pytest.fixture(scope="module")
def crop():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def test_similarity_mosaic_is_one_image_with_one_colour_scale():
    similarity = torch.rand(4, 5, 4, 5) * 2 - 1
    fig, axes = new_axes(1, 2)
    returned = plot_pos_embed_similarity(similarity, ax=axes[0, 1], title="T")
    assert returned is fig
    images = axes[0, 1].get_images()
    assert len(images) == 1
    assert images[0].get_clim() == (-1, 1)
    mosaic = np.ma.filled(images[0].get_array(), np.nan)
    assert mosaic.shape == (4 * 5 - 1, 5 * 6 - 1)
    assert np.allclose(mosaic[5:9, 12:17], similarity[1, 2].numpy())  # tile (1, 2) after 1-pixel gaps
    assert axes[0, 1].get_title() == "T"


def test_patch_grid_shows_every_patch_of_the_crop(crop):
    fig = plot_patch_grid(crop, 16, gap=2)
    mosaic = fig.axes[0].get_images()[0].get_array()
    assert mosaic.shape == (4 * 18 - 2, 4 * 18 - 2, 3)
    assert np.allclose(mosaic[18:34, 36:52], np.asarray(crop)[16:32, 32:48] / 255)


def test_filter_components_are_stretched_one_by_one():
    components = torch.randn(5, 3, 4, 4)
    fig = plot_filter_components(components, ncols=3)
    mosaic = fig.axes[0].get_images()[0].get_array()
    assert mosaic.shape == (2 * 6 - 2, 3 * 6 - 2, 3)
    first = mosaic[:4, :4]
    assert np.isclose(first.min(), 0) and np.isclose(first.max(), 1)


def test_query_attention_draws_one_panel_per_head(crop):
    maps = torch.rand(3, 4, 4)
    fig, axes = new_axes(1, 3)
    assert plot_query_attention(crop, maps, (1, 2), axes=axes) is fig
    for head, ax in enumerate(axes.ravel()):
        assert np.allclose(ax.get_images()[1].get_array(), maps[head].numpy())
        assert len(ax.patches) == 1  # the query patch outline
    assert isinstance(plot_query_attention(crop, torch.rand(5, 4, 4)), Figure)


def test_mistakes_side_by_side_with_their_errors(crop):
    maps = {"correct": torch.rand(4, 4), "no_scale": torch.rand(4, 4)}
    fig = plot_attention_mistakes(crop, maps, {"no_scale": 0.5})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "correct" and "50%" in titles[1]


def test_residual_norms_and_gelu_plots():
    norms = torch.rand(13, 1, 197)
    ax = plot_residual_norms(norms, num_prefix_tokens=1).axes[0]
    lines = ax.get_lines()
    assert np.allclose(lines[0].get_ydata(), norms[:, 0, 0].numpy())
    assert np.allclose(lines[1].get_ydata(), norms[:, 0, 1:].mean(dim=1).numpy())
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
    fig = plot_confusion_matrix(matrix, ["a", "b"])
    ax = fig.axes[0]
    assert ax.get_images()[0].get_clim() == (0, 5) and len(fig.axes) == 2  # the matrix and its colour bar
    assert sorted(t.get_text() for t in ax.texts) == ["1", "4", "5"]  # empty cells stay blank
    assert "9 of 10" in ax.get_title()


def test_feature_embedding_colours_each_class():
    from vit_inspect.plotting import plot_feature_embedding

    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    fig = plot_feature_embedding(points, torch.tensor([0, 0, 1]), ["zero", "one"])
    collections = fig.axes[0].collections
    assert len(collections) == 2 and np.allclose(collections[1].get_offsets(), [[5.0, 5.0]])


def test_deletion_curves_legend_gives_the_areas():
    from vit_inspect import curve_area
    from vit_inspect.plotting import plot_deletion_curves

    curves = {"rollout": torch.tensor([1.0, 0.5, 0.0]), "random (seed 0)": torch.tensor([1.0, 1.0, 0.0])}
    fig = plot_deletion_curves(curves)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"rollout: area {float(curve_area(curves['rollout'])):.3f}", "random (seed 0): area 0.750"]
    assert np.allclose(fig.axes[0].get_lines()[0].get_xdata(), [0, 0.5, 1])


def test_randomisation_curves_and_locality_plots():
    from vit_inspect.plotting import plot_pos_embed_locality, plot_randomisation_curves

    curves = {"rollout": torch.tensor([1.0, 0.9, 0.2]), "last-layer attention": torch.tensor([1.0, 0.1, -0.2])}
    ax = plot_randomisation_curves(curves).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["trained", "top 1", "top 2"]
    assert np.allclose(ax.get_lines()[1].get_ydata(), [1.0, 0.1, -0.2]) and ax.get_ylim()[0] <= -0.2
    gaps = {"neighbours - far patches": torch.tensor([0.0, 0.3])}
    line = plot_pos_embed_locality(gaps).axes[0].get_lines()[0]
    assert np.allclose(line.get_xdata(), [1, 2]) and np.allclose(line.get_ydata(), [0.0, 0.3])


def test_examples_mark_wrong_predictions_in_red():
    from vit_inspect.plotting import plot_examples

    pixels = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    fig = plot_examples(pixels, torch.tensor([0, 1, 1]), ["a", "b"], predictions=torch.tensor([0, 1, 0]), ncols=3)
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes]
    assert titles == [("a -> a", "black"), ("b -> b", "black"), ("b -> a", "red")]
