"""The report: computed from one forward pass, typed, summarised; its figure and JSON."""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import torch
from PIL import Image

from vit_inspect import (attention_rollout, capture, grid_argmax, mean_attention_distance, preprocess,
                         rollout_to_grid, sample_images)
from vit_inspect import Provenance, VitInspectError
from vit_inspect.cli import main
from vit_inspect.report import ReportData, compute_report

TINY = "vit_tiny_patch16_224"  # 12 blocks, 3 heads, 14 x 14 patches


def report(image, out, *extra) -> int:
    return main(["report", str(image), "--out", str(out), "--model", TINY, "--weights", "random", *extra])


def test_report_adds_distance_and_rollout_argmax(tiny, tmp_path):
    image = sample_images()[0]
    assert report(image, tmp_path / "out", "--query", "2,11", "--layer", "5") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    captured = capture(tiny, preprocess(image, tiny).tensor)
    attention = captured["attention"]  # (1, L, H, N, N)
    expected_distance = mean_attention_distance(attention, (14, 14), 1, 16)[0]  # (L, H)
    expected_argmax = grid_argmax(rollout_to_grid(attention_rollout(attention), (14, 14), 1))[0]
    assert len(summary["attention_distance"]) == 12 and {len(r) for r in summary["attention_distance"]} == {3}
    torch.testing.assert_close(torch.tensor(summary["attention_distance"]), expected_distance)
    assert summary["rollout_argmax_patch"] == expected_argmax.tolist()
    assert summary["top5"][0]["index"] == int(captured["logits"].argmax())
    assert Image.open(tmp_path / "out" / "report.png").size[0] > 2000


def random_provenance() -> Provenance:
    return Provenance(TINY, "random", trained=False, seed=0)


def test_report_runs_the_model_once_and_keeps_the_chosen_query(tiny):
    calls = []
    handle = tiny.register_forward_hook(lambda *args: calls.append(1))
    try:
        data = compute_report(sample_images()[1], tiny, random_provenance(), query=(0, 13), layer=11)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert data.query == (0, 13) and data.layer == 11
    assert data.query_maps.shape == (3, 14, 14)
    assert data.pos_embed_similarity.shape == (14, 14, 14, 14)
    assert data.attention_distance.shape == (12, 3) and data.input_size == (3, 224, 224)


def test_report_data_fields_are_all_typed():
    hints = typing.get_type_hints(ReportData)
    assert set(hints) == {field.name for field in dataclasses.fields(ReportData)}
    assert not [name for name, hint in hints.items() if hint in (object, dict, typing.Any)]


def test_python_callers_get_range_errors_too(tiny):
    with pytest.raises(VitInspectError, match="outside the 14x14 grid"):
        compute_report(sample_images()[0], tiny, random_provenance(), query=(14, 0))
    with pytest.raises(VitInspectError, match="12 blocks"):
        compute_report(sample_images()[0], tiny, random_provenance(), layer=12)
