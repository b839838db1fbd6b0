"""The benchmark's machinery: interleaved rounds and the FLOP count it reports against."""
import pytest

from vit_inspect import create_untrained
from vit_inspect.bench import VIT_B16_GFLOPS, forward_gflops, interleaved


def test_bench_rounds_interleave_in_rotating_order_and_drop_the_warm_up():
    order = []
    times = interleaved({name: (lambda name=name: order.append(name)) for name in "abc"}, rounds=3, warmup=1)
    assert order == list("abc" "bca" "cab" "abc")
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_bench_flop_count_matches_the_known_vit_b16_figure():
    assert forward_gflops(create_untrained("vit_base_patch16_224")) == pytest.approx(VIT_B16_GFLOPS, abs=0.05)
    assert forward_gflops(create_untrained("vit_base_patch32_224")) == pytest.approx(8.8, abs=0.1)  # timm: 4.4 GMACs


def test_bench_explorer_times_redraws_without_forward_passes(tiny, capsys):
    import copy

    from vit_inspect.bench import bench_explorer
    bench_explorer(copy.deepcopy(tiny), "vit_tiny_patch16_224", changes=3, rounds=1)  # asserts no capture on redraw
    out = capsys.readouterr().out
    assert "redraw after a change, one head" in out and "redraw after a change, all heads" in out
    assert "new image" in out and ("met" in out)


def test_many_image_figure_takes_turns_batch_by_batch_and_sums_each_pass():
    from vit_inspect.bench import batchwise
    calls = []
    times = batchwise({name: (lambda images, name=name: calls.append((name, images))) for name in "ab"},
                      batches=[1, 2, 3], passes=2)
    assert calls == [("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 3), ("b", 3),
                     ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3)]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 2, "b": 2}
    assert all(seconds > 0 for per_pass in times.values() for seconds in per_pass)


def test_bench_explorer_times_two_views_side_by_side_without_forward_passes(tiny, capsys):
    import copy

    from vit_inspect.bench import bench_explorer_two_views
    bench_explorer_two_views(copy.deepcopy(tiny), "vit_tiny_patch16_224", changes=3)  # asserts 2 captures only
    out = capsys.readouterr().out
    for label in ("two images, one head", "two images, all heads", "two layers, one head", "two layers, all heads"):
        assert f"redraw, {label}" in out, out


def test_bench_training_step_compares_train_vit_with_a_plain_loop_that_learns(capsys):
    import torch

    from vit_inspect.bench import bench_training, plain_training_epoch
    from vit_inspect.training import build_vit
    bench_training(rounds=1, num_images=64, batch=32)
    out = capsys.readouterr().out
    assert "train_vit images/s / plain loop images/s" in out and out.count("images/s (median)") == 2
    model, images = build_vit(), torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)  # (n, 3, S, S)
    labels = torch.arange(32) % 10
    before = model.head.weight.detach().clone()
    plain_training_epoch(model, images, labels, batch=16)
    assert not torch.equal(before, model.head.weight), "the plain loop takes optimiser steps"
