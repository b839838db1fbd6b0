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
