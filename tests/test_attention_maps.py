"""Notebook 06 helpers: attention rollout and mean attention distance, properties and small hand examples.

The mutation tests at the end plant one bug at a time in a helper (monkeypatched) and show
that the check the suite relies on fails on it, and passes on the real code.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from vit_inspect import (HEAD_FUSIONS, StreamedDistance, StreamedRollout, VitInspectError, analyse_attention,
                         attention_rollout, average_attention_distance, capture, create_untrained, fuse_heads,
                         bright_ratio, grid_argmax, grid_size_of, image_batches, ink_ratio, map_correlation, map_vs_brightness,
                         mean_attention_distance, num_prefix_tokens_of, patch_brightness, patch_centres, patch_size_of,
                         rollout_to_grid, sample_images, spatial_null_correlations, uniform_attention_distance)
from vit_inspect import attention_maps
from vit_inspect.attention_maps import discard_lowest, reusable
from vit_inspect.recorder import fused_attention_flags

from .mutation import fails, passes


def random_attention(*shape: int, seed: int = 0) -> torch.Tensor:
    """Row-stochastic (..., N, N) weights, like a softmax output."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).mul(3).softmax(dim=-1)


def one_head(*layers: list[list[float]]) -> torch.Tensor:
    """(1, L, 1, N, N) from L hand-written N x N matrices."""
    return torch.tensor(layers, dtype=torch.float64)[None, :, None]


# ---------------------------------------------------------------- rollout

@pytest.mark.parametrize("head_fusion", HEAD_FUSIONS)
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_rollout_rows_sum_to_one(head_fusion, discard_ratio):
    rollout = attention_rollout(random_attention(3, 4, 5, 9, 9), head_fusion, discard_ratio)
    assert rollout.shape == (3, 9, 9) and (rollout >= 0).all()
    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(3, 9))


def test_rollout_of_identity_attention_is_identity():
    attention = torch.eye(7).expand(2, 6, 3, 7, 7)
    torch.testing.assert_close(attention_rollout(attention), torch.eye(7).expand(2, 7, 7))


def check_rollout_hand_example():
    """Two layers, non-symmetric matrices, worked by hand: later layers multiply on the left."""
    # layer 0: both tokens attend to token 0; layer 1: both attend to token 1
    attention = one_head([[1, 0], [1, 0]], [[0, 1], [0, 1]])
    # (A + I) row-normalised: layer 0 -> [[1, 0], [.5, .5]], layer 1 -> [[.5, .5], [0, 1]]
    # R = A1' A0' = [[.5*1 + .5*.5, .5*.5], [.5, .5]]   (A0' A1' would be [[.5, .5], [.25, .75]])
    expected = torch.tensor([[[0.75, 0.25], [0.5, 0.5]]], dtype=torch.float64)
    torch.testing.assert_close(attention_maps.attention_rollout(attention), expected)


def test_rollout_small_hand_example_later_layers_on_the_left():
    check_rollout_hand_example()


def test_head_fusions_on_a_hand_example():
    heads = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.6, 0.4]]])  # (H, N, N)
    torch.testing.assert_close(fuse_heads(heads, "mean"), torch.tensor([[0.6, 0.4], [0.4, 0.6]]))
    torch.testing.assert_close(fuse_heads(heads, "max"), torch.tensor([[0.9, 0.7], [0.6, 0.8]]))
    torch.testing.assert_close(fuse_heads(heads, "min"), torch.tensor([[0.3, 0.1], [0.2, 0.4]]))
    rollout = attention_rollout(heads[None, None], head_fusion="max")  # max + I = [[1.9, .7], [.6, 1.8]]
    torch.testing.assert_close(rollout[0], torch.tensor([[1.9 / 2.6, 0.7 / 2.6], [0.6 / 2.4, 1.8 / 2.4]]))
    with pytest.raises(VitInspectError, match="head_fusion"):
        attention_rollout(heads[None, None], head_fusion="median")


def test_discard_zeroes_the_weakest_links_only():
    fused = torch.tensor([[[0.6, 0.4], [0.1, 0.9]]])
    kept = fused.clone()
    torch.testing.assert_close(discard_lowest(fused, 0.25), torch.tensor([[[0.6, 0.4], [0.0, 0.9]]]))
    torch.testing.assert_close(discard_lowest(fused, 0.5), torch.tensor([[[0.6, 0.0], [0.0, 0.9]]]))
    assert torch.equal(fused, kept)
    # with the 0.1 discarded, token 1 keeps only itself: (0 + .9 + 1) / 1.9 on the diagonal
    rollout = attention_rollout(one_head([[0.6, 0.4], [0.1, 0.9]]), discard_ratio=0.25)
    torch.testing.assert_close(rollout[0, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(VitInspectError, match="discard_ratio"):
        attention_rollout(one_head([[1, 0], [0, 1]]), discard_ratio=1.0)


def test_rollout_is_batched():
    attention = random_attention(3, 4, 2, 6, 6, seed=3)
    one_by_one = torch.cat([attention_rollout(attention[i:i + 1], "min", 0.3) for i in range(3)])
    torch.testing.assert_close(attention_rollout(attention, "min", 0.3), one_by_one)


@pytest.mark.parametrize("prefix", [1, 2, 5])
def test_rollout_to_grid_takes_the_class_row_over_patches_row_major(prefix):
    gh, gw = 3, 4
    N = prefix + gh * gw
    rollout = torch.zeros(2, N, N)
    for row, col in itertools.product(range(gh), range(gw)):
        rollout[:, 0, prefix + row * gw + col] = 10 * row + col
    grid = rollout_to_grid(rollout, (gh, gw), prefix)
    assert grid.shape == (2, gh, gw)
    assert grid[1, 2, 3] == 23 and grid[0, 1, 0] == 10
    assert grid_argmax(grid).tolist() == [[2, 3], [2, 3]]
    with pytest.raises(VitInspectError, match="prefix"):
        rollout_to_grid(rollout, (gh, gw + 1), prefix)


# ---------------------------------------------------------------- mean attention distance

def test_patch_centres_are_pixel_centres_row_major():
    centres = patch_centres((2, 3), 16)
    assert centres.tolist() == [[8, 8], [8, 24], [8, 40], [24, 8], [24, 24], [24, 40]]


def check_neighbour_is_one_patch_away():
    """Every patch attends only to a horizontal or vertical neighbour: exactly 16 px, 32 for 32-px patches."""
    for (gh, gw), patch_size in [((3, 4), 16), ((2, 5), 32)]:
        P = gh * gw
        attention = torch.zeros(1, 1, 1 + P, 1 + P, dtype=torch.float64)
        for row, col in itertools.product(range(gh), range(gw)):
            if (row + col) % 2:  # the patch to the right (to the left on the last column)
                key = (row, col + 1 if col + 1 < gw else col - 1)
            else:  # the patch below (above on the last row)
                key = (row + 1 if row + 1 < gh else row - 1, col)
            attention[0, 0, 1 + row * gw + col, 1 + key[0] * gw + key[1]] = 1.0
        distance = attention_maps.mean_attention_distance(attention, (gh, gw), 1, patch_size)
        torch.testing.assert_close(distance, torch.full((1, 1), float(patch_size), dtype=torch.float64))


def test_a_neighbouring_patch_centre_is_exactly_one_patch_away():
    check_neighbour_is_one_patch_away()


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_attention_on_self_is_zero_pixels(prefix):
    N = prefix + 12
    attention = torch.eye(N).expand(2, 3, 4, N, N)
    distance = mean_attention_distance(attention, (3, 4), prefix, 16)
    assert distance.shape == (2, 3, 4)
    torch.testing.assert_close(distance, torch.zeros(2, 3, 4))


@pytest.mark.parametrize("grid, patch_size, prefix", [((3, 4), 16, 1), ((2, 5), 32, 2), ((4, 4), 14, 5)])
def test_uniform_attention_gives_the_mean_pairwise_distance(grid, patch_size, prefix):
    gh, gw = grid
    cells = list(itertools.product(range(gh), range(gw)))
    by_hand = sum(math.dist(a, b) for a in cells for b in cells) / len(cells) ** 2 * patch_size
    N = prefix + gh * gw
    uniform = torch.full((1, 2, 3, N, N), 1.0 / N, dtype=torch.float64)  # prefix keys get mass too
    distance = mean_attention_distance(uniform, grid, prefix, patch_size)
    torch.testing.assert_close(distance, torch.full((1, 2, 3), by_hand, dtype=torch.float64))
    assert uniform_attention_distance(grid, patch_size) == pytest.approx(by_hand)


def test_hand_example_prefix_keys_dropped_and_rows_renormalised():
    # grid 1 x 2 with 16-px patches: the two centres are 16 px apart; token 0 is the class token
    attention = torch.tensor([[[0.2, 0.2, 0.6],   # class-token query: ignored
                              [0.5, 0.125, 0.375],  # patch 0: .25 / .75 of its patch mass -> 12 px
                              [0.9, 0.1, 0.0]]])    # patch 1: all patch mass on patch 0 -> 16 px
    distance = mean_attention_distance(attention, (1, 2), num_prefix_tokens=1, patch_size=16)
    torch.testing.assert_close(distance, torch.tensor([(12.0 + 16.0) / 2]))
    attention[0, 0] = torch.tensor([1.0, 0.0, 0.0])  # what the class token does changes nothing
    torch.testing.assert_close(mean_attention_distance(attention, (1, 2), 1, 16), torch.tensor([14.0]))


def test_distance_rejects_a_grid_that_does_not_fit():
    with pytest.raises(VitInspectError, match="prefix"):
        mean_attention_distance(torch.eye(10).expand(1, 1, 10, 10), (3, 3), 2, 16)


def test_average_over_batches_streams_to_the_mean_over_all_images(tiny):
    paths = sample_images()[:3]
    batches = list(image_batches(paths, tiny, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 1]

    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    counter = Counter()
    streamed = average_attention_distance(tiny, iter(batches), progress=counter)
    everything = capture(tiny, torch.cat(batches))["attention"]  # (3, L, H, N, N)
    at_once = mean_attention_distance(everything, (14, 14), 1, 16).mean(dim=0)  # (L, H)
    torch.testing.assert_close(streamed, at_once)
    assert counter.n == 3 and streamed.shape == (12, 3)
    assert ((streamed > 0) & (streamed < math.hypot(224, 224))).all()
    with pytest.raises(VitInspectError, match="no images"):
        average_attention_distance(tiny, iter([]))


def test_streaming_reuse_takes_a_leading_slice_only_when_it_fits():
    buffer = torch.empty(8, 2, 3, 197, 197)
    assert reusable(None, 8, 197) is None
    assert reusable(buffer, 9, 197) is None and reusable(buffer, 8, 50) is None
    assert reusable(buffer, 5, 197).shape == (5, 2, 3, 197, 197)
    assert reusable(buffer, 5, 197).data_ptr() == buffer.data_ptr()


# ---------------------------------------------------------------- brightness, the saliency sanity check

def test_patch_brightness_is_the_mean_of_each_patch_row_major():
    pixels = torch.zeros(1, 3, 32, 48)
    pixels[:, :, 16:, 32:] = 0.6  # patch (1, 2) of a 2 x 3 grid of 16-px patches
    pixels[:, 0, :16, :16] = 0.9  # patch (0, 0), red channel only
    brightness = patch_brightness(pixels, 16)
    assert brightness.shape == (1, 2, 3)
    torch.testing.assert_close(brightness, torch.tensor([[[0.3, 0, 0], [0, 0, 0.6]]]))


def test_map_correlation_is_pearsons_r_per_image():
    maps = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1))
    other = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(2))
    expected = torch.stack([torch.corrcoef(torch.stack([maps[i].flatten(), other[i].flatten()]))[0, 1]
                            for i in range(3)])
    torch.testing.assert_close(map_correlation(maps, other), expected)
    torch.testing.assert_close(map_correlation(maps, 3 * maps + 1), torch.ones(3))
    torch.testing.assert_close(map_correlation(maps, -maps), -torch.ones(3))


def test_map_correlation_keeps_leading_dimensions():
    maps = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))  # (steps, B, gh, gw)
    other = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(4))
    r = map_correlation(maps, other)
    assert r.shape == (2, 3)
    torch.testing.assert_close(r[1], map_correlation(maps[1], other))


def test_map_vs_brightness_gives_r_and_the_bright_ratio_on_a_hand_example():
    brightness = torch.zeros(1, 2, 3)
    brightness[0, 0, :2] = 0.8  # two bright patches, four dark
    heat = torch.ones(1, 2, 3) + 2 * (brightness > 0.25)  # 3 on the bright patches, 1 on the dark ones
    agreement = map_vs_brightness(heat, brightness)
    torch.testing.assert_close(agreement["bright_ratio"], torch.tensor([3.0]))
    torch.testing.assert_close(agreement["r"], torch.tensor([1.0]))
    faint = 1 + 1e-3 * (heat - 1)  # the same pattern, hardly any mass moved: r unchanged, ratio near 1
    torch.testing.assert_close(map_vs_brightness(faint, brightness)["r"], torch.tensor([1.0]))
    assert abs(float(map_vs_brightness(faint, brightness)["bright_ratio"]) - 1) < 0.01


def test_notebook_09s_ink_ratio_is_the_bright_ratio_of_06():
    maps = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(5))  # (L + 1, B, gh, gw)
    ink = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(ink_ratio(maps, ink), bright_ratio(maps, ink))
    torch.testing.assert_close(map_vs_brightness(maps, ink)["bright_ratio"], ink_ratio(maps, ink))


def smooth_maps(count: int, seed: int) -> torch.Tensor:
    """(count, 14, 14) random maps whose neighbouring cells are alike, like brightness or a rollout map."""
    noise = torch.randn(count, 1, 18, 18, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1).squeeze(1)  # (count, 14, 14)


def check_null_pairs_unrelated_maps(null_correlations) -> None:
    maps = smooth_maps(4, seed=7)
    null = null_correlations(maps, maps)  # each map against ITSELF: r = 1, but the null must not contain it
    assert null.shape == (4, 6)
    torch.testing.assert_close(null[0, 0], map_correlation(maps[:1], maps[:1].flip(-2))[0])
    torch.testing.assert_close(null[0, 3:], map_correlation(maps[:1], maps[1:]))  # the other images, in order
    torch.testing.assert_close(null[2, 3:], map_correlation(maps[2:3], maps[[0, 1, 3]]))
    assert null.max() < 0.99, "the null never pairs a map with its own image"


def null_that_keeps_the_pair(maps, other):
    B = maps.shape[0]
    return map_correlation(maps[:, None], other[None])[:, :B].repeat(1, 2)[:, :6]  # the diagonal (j == i) left in


def test_spatial_null_pairs_unrelated_maps_and_is_wider_than_independent_cells():
    passes(check_null_pairs_unrelated_maps, spatial_null_correlations)
    fails(check_null_pairs_unrelated_maps, null_that_keeps_the_pair)
    smooth = spatial_null_correlations(smooth_maps(8, seed=8), smooth_maps(8, seed=9))  # unrelated, structured
    white = spatial_null_correlations(torch.rand(8, 14, 14, generator=torch.Generator().manual_seed(10)),
                                      torch.rand(8, 14, 14, generator=torch.Generator().manual_seed(11)))
    se = 1 / math.sqrt(14 * 14)
    assert white.std() < 1.5 * se, "independent cells: r spreads about +-1/sqrt(cells)"
    assert smooth.std() > 2 * se and smooth.abs().max() > 4 * se, "smooth maps: chance reaches far wider"


# ---------------------------------------------------------------- mutation tests

REAL_ROLLOUT = attention_rollout


def rollout_later_layers_on_the_right(attention, head_fusion="mean", discard_ratio=0.0):
    return REAL_ROLLOUT(attention.flip(1), head_fusion, discard_ratio)  # A_1 ... A_L instead of A_L ... A_1


def rollout_without_the_residual(attention, head_fusion="mean", discard_ratio=0.0):
    B, L, H, N, _ = attention.shape
    fused = fuse_heads(attention, head_fusion)  # (B, L, N, N)
    rollout = fused[:, 0]
    for layer in range(1, L):
        rollout = fused[:, layer] @ rollout
    return rollout


def patch_centres_in_patches(grid, patch_size):
    return REAL_CENTRES(grid, 1)  # units: patches, not pixels


REAL_CENTRES = patch_centres


@pytest.mark.parametrize("name, bug, check", [
    ("attention_rollout", rollout_later_layers_on_the_right, check_rollout_hand_example),
    ("attention_rollout", rollout_without_the_residual, check_rollout_hand_example),
    ("patch_centres", patch_centres_in_patches, check_neighbour_is_one_patch_away),
], ids=["rollout order", "rollout without the identity", "distance in patches, not pixels"])
def test_mutation_in_attention_maps_is_caught(monkeypatch, name, bug, check):
    passes(check)
    monkeypatch.setattr(attention_maps, name, bug)
    fails(check)


# ---------------------------------------------------------------- streamed inside the forward pass

STREAM_MODELS = {  # name, create_model kwargs, input (H, W): prefix 1, 2 and 5, patch 32, a non-square grid, qk-norm
    "tiny": ("vit_tiny_patch16_224", {}, (224, 224)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, (224, 224)),
    "registers": ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, (224, 224)),
    "patch32": ("vit_base_patch32_224", {}, (224, 224)),
    "non_square": ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (160, 224)),
    "qk_norm": ("vit_tiny_patch16_224", {"qk_norm": True}, (224, 224)),
}


@pytest.fixture(scope="module", params=list(STREAM_MODELS), ids=list(STREAM_MODELS))
def stream_case(request):
    name, kwargs, size = STREAM_MODELS[request.param]
    model = create_untrained(name, seed=0, **kwargs)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(4))
    return model, images, capture(model, images)


class EveryLayer:
    """A LayerAnalysis that copies every layer's weights it is handed: (B, L, H, N, N)."""

    def __init__(self) -> None:
        self.layers: list[torch.Tensor] = []

    def update(self, slot: int, attention: torch.Tensor) -> None:
        self.layers.append(attention.clone())

    def result(self) -> torch.Tensor:
        return torch.stack(self.layers, dim=1)


def streamed_with_the_weights_seen(model, images, head_fusion="mean", discard_ratio=0.0) -> dict[str, torch.Tensor]:
    grid, prefix, patch = grid_size_of(model, images), num_prefix_tokens_of(model), patch_size_of(model)
    analyses = {"rollout": StreamedRollout(head_fusion, discard_ratio),
                "attention_distance": StreamedDistance(grid, prefix, patch), "seen": EveryLayer()}
    return capture(model, images, analyses=analyses, keep_attention=False)


def test_streamed_weights_equal_the_recorded_ones(stream_case):
    """Streaming computes the weights from timm's q and k (fused path on); they equal what timm's explicit path records."""
    model, images, full = stream_case
    streamed = streamed_with_the_weights_seen(model, images)
    assert "attention" not in streamed, "the (B, L, H, N, N) attention is stored only on request"
    torch.testing.assert_close(streamed["seen"], full["attention"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(streamed["logits"], full["logits"], rtol=1e-4, atol=1e-5)
    assert not any(t.is_inference() for t in streamed.values())


@pytest.mark.parametrize("head_fusion, discard_ratio", [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)])
def test_streamed_analyses_equal_the_full_tensor_ones(stream_case, head_fusion, discard_ratio):
    """Same weights, same analyses. (Against capture's weights, which differ by float rounding, a discard
    ratio may drop a different one of two nearly equal entries.)"""
    model, images, _ = stream_case
    grid, prefix, patch = grid_size_of(model, images), num_prefix_tokens_of(model), patch_size_of(model)
    streamed = streamed_with_the_weights_seen(model, images, head_fusion, discard_ratio)
    torch.testing.assert_close(streamed["rollout"], attention_rollout(streamed["seen"], head_fusion, discard_ratio))
    torch.testing.assert_close(streamed["attention_distance"],
                               mean_attention_distance(streamed["seen"], grid, prefix, patch))


def test_analyse_attention_equals_the_analyses_of_capture(stream_case):
    model, images, full = stream_case
    grid, prefix, patch = grid_size_of(model, images), num_prefix_tokens_of(model), patch_size_of(model)
    streamed = analyse_attention(model, images)
    torch.testing.assert_close(streamed["rollout"], attention_rollout(full["attention"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(streamed["attention_distance"],
                               mean_attention_distance(full["attention"], grid, prefix, patch), rtol=1e-4, atol=1e-4)


def test_streaming_keeps_timms_fused_attention_on(tiny):
    """What makes streaming about as fast as a plain forward: timm's fused kernel runs, no weights are allocated per layer."""
    flags_seen = []

    class FlagsAtEachLayer(EveryLayer):
        def update(self, slot, attention):
            flags_seen.append(set(fused_attention_flags(tiny).values()))
            super().update(slot, attention)

    before = fused_attention_flags(tiny)
    seen = FlagsAtEachLayer()
    capture(tiny, torch.randn(1, 3, 224, 224), analyses={"seen": seen}, keep_attention=False)
    assert flags_seen == [{True}] * 12, f"expected fused attention on at every layer, saw {flags_seen}"
    torch.testing.assert_close(seen.result().sum(dim=-1), torch.ones(1, 12, 3, 197),
                               msg="each row of the weights computed beside the fused kernel sums to 1")
    assert fused_attention_flags(tiny) == before


def test_streaming_falls_back_to_the_recorded_weights_for_other_attention(tiny):
    """An attention that is not timm's own Attention (here a subclass) is recorded from its explicit path."""
    import copy

    from timm.layers import Attention

    class Scaled(Attention):
        def forward(self, x, attn_mask=None, is_causal=False):
            return super().forward(x, attn_mask, is_causal) * 2.0

    model = copy.deepcopy(tiny)
    for block in model.blocks:
        block.attn.__class__ = Scaled
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    streamed = streamed_with_the_weights_seen(model, images)
    torch.testing.assert_close(streamed["seen"], capture(model, images)["attention"], rtol=0, atol=0)


def test_streaming_refuses_an_attention_mask(tiny, monkeypatch):
    images = torch.randn(1, 3, 224, 224)
    block = tiny.blocks[3]
    masked = lambda x, **kwargs: x + block.attn(block.norm1(x), attn_mask=torch.zeros(197, 197))  # noqa: E731
    monkeypatch.setattr(block, "forward", masked)
    with pytest.raises(VitInspectError, match="attention mask"):
        analyse_attention(tiny, images)
    monkeypatch.undo()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.modules())


def test_streamed_analyses_can_keep_the_attention_too(tiny):
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    kept = analyse_attention(tiny, images, keep_attention=True)
    torch.testing.assert_close(kept["attention"], capture(tiny, images)["attention"], rtol=0, atol=0)
    torch.testing.assert_close(kept["rollout"], attention_rollout(kept["attention"]))


def test_streamed_analyses_follow_the_chosen_layers(tiny):
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    layers = [2, 5, 11]
    analyses = {"rollout": StreamedRollout(), "distance": StreamedDistance((14, 14), 1, 16)}
    streamed = capture(tiny, images, layers=layers, analyses=analyses)
    torch.testing.assert_close(streamed["rollout"], attention_rollout(streamed["attention"]))
    torch.testing.assert_close(streamed["distance"], mean_attention_distance(streamed["attention"], (14, 14), 1, 16))
    assert streamed["distance"].shape == (1, 3, 3)
    unordered = capture(tiny, images, layers=[11, 2, 5], analyses={"distance": StreamedDistance((14, 14), 1, 16)})
    torch.testing.assert_close(unordered["distance"], streamed["distance"][:, [2, 0, 1]])
    with pytest.raises(VitInspectError, match="forward order"):
        capture(tiny, images, layers=[5, 2], analyses={"rollout": StreamedRollout()})


def test_streaming_stores_no_attention_tensor_of_all_layers(tiny):
    """The largest single allocation of a streamed pass is one layer's attention, not all of them."""
    from torch.profiler import ProfilerActivity, profile
    images = torch.randn(2, 3, 224, 224)
    all_layers = 2 * 12 * 3 * 197 * 197 * 4  # bytes of the (B, L, H, N, N) float32 attention
    largest = {}
    for keep in (False, True):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            analyse_attention(tiny, images, keep_attention=keep)
        largest[keep] = max(event.cpu_memory_usage for event in prof.events())
    assert largest[True] >= all_layers, "the profiler must see the full tensor when it is kept"
    assert largest[False] < all_layers / 6, f"a streamed pass allocated {largest[False]} bytes at once"


def test_streaming_leaves_the_model_as_it_was_even_after_an_error(tiny, monkeypatch):
    images = torch.randn(1, 3, 224, 224)
    flags = fused_attention_flags(tiny)

    def fail(*args, **kwargs):
        raise RuntimeError("boom in block 4")

    monkeypatch.setattr(tiny.blocks[4].mlp, "forward", fail)
    with pytest.raises(RuntimeError, match="boom in block 4"):
        analyse_attention(tiny, images)
    monkeypatch.undo()
    assert fused_attention_flags(tiny) == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.modules())
    with pytest.raises(VitInspectError, match="do not match"):
        capture(tiny, images, analyses={"d": StreamedDistance((7, 7), 1, 32)}, keep_attention=False)
    assert all(not m._forward_hooks for m in tiny.modules())
