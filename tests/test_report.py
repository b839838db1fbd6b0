"""The report: computed from one forward pass, typed, summarised; its figure and JSON."""
from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import sys
import textwrap
import typing

import numpy as np
import pytest
import torch
from PIL import Image

from vit_inspect import (attention_rollout, capture, grid_argmax, mean_attention_distance, preprocess,
                         rollout_to_grid, sample_images)
from vit_inspect import Provenance, VitInspectError
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from vit_inspect import class_name, crop_box, crop_warnings, load_image
from vit_inspect.cli import main
from vit_inspect.report import ReportData, compute_report, plot_report

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
    assert Image.open(tmp_path / "out" / "report.png").size == (1920, 1080)


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


# ---------------------------------------------------------------- the page on a screen

SCREEN_WIDTH_PX = 1280  # a laptop showing the report full width
MIN_SCREEN_PX = 11.0    # smallest text height that stays readable there


@pytest.fixture(scope="module")
def report_data(tiny) -> ReportData:
    return compute_report(sample_images()[0], tiny, random_provenance())


def drawn(fig):
    """The figure laid out and drawn at the report's resolution, and its renderer."""
    canvas = FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), dpi=120)
    return canvas.get_renderer()


def texts_of(fig) -> list[Text]:
    """The texts drawn on the page: tick labels of axes that are switched off are never drawn."""
    hidden = {id(t) for ax in fig.get_axes() if not ax.axison
              for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


@pytest.mark.parametrize("warned", [False, True])
def test_report_page_is_16_9_and_every_text_is_readable_at_1280_px(report_data, warned):
    if warned:  # both warnings at once, with the longest numbers, in the page title
        config = {"input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "center"}
        warnings = tuple(crop_warnings((30000, 10), config))
        report_data = dataclasses.replace(report_data, warnings=warnings)
        assert len(warnings) == 2
    fig = plot_report(report_data)
    renderer = drawn(fig)
    width, height = fig.get_size_inches() * 120
    assert (round(width), round(height)) == (1920, 1080)
    for text in texts_of(fig):
        on_screen = text.get_fontsize() * 120 / 72 * SCREEN_WIDTH_PX / width
        assert on_screen >= MIN_SCREEN_PX, f"{text.get_text()!r} is {on_screen:.1f} px high at 1280 px wide"
        box = text.get_window_extent(renderer)
        assert box.x0 >= -2 and box.x1 <= width + 2 and box.y0 >= -2 and box.y1 <= height + 2, \
            f"{text.get_text()!r} runs off the page: {box}"


def test_report_lays_out_two_rows_with_all_panels(report_data):
    fig = plot_report(report_data)
    renderer = drawn(fig)
    page = fig.bbox.height
    boxes = {ax: ax.get_window_extent(renderer) for ax in fig.get_axes()
             if (ax.axison or ax.images) and not hasattr(ax, "_colorbar")}
    panels = [ax for ax, box in boxes.items() if box.height > 0.1 * page]
    top = [ax for ax in panels if boxes[ax].y0 > 0.45 * page]
    bottom = [ax for ax in panels if boxes[ax].y1 < 0.55 * page]
    assert len(top) + len(bottom) == len(panels), "every panel lies in the top or the bottom row"
    assert len(top) == 4 and len(bottom) == 1 + 3, "crop, top-5, similarity, rollout; distance and 3 heads"
    heads = [ax for ax in fig.get_axes() if re.search(r"\bhead \d+\b", ax.get_title())]
    assert len(heads) == 3, "one panel per head of the tiny model"


def test_top5_names_are_whole_and_do_not_collide(report_data):
    """The five longest ImageNet names at once: every word and percentage shown, no row over another."""
    longest = sorted(range(1000), key=lambda i: len(class_name(i)))[-5:]
    logits = torch.zeros(1, 1000)
    logits[0, longest] = torch.arange(5, 10, dtype=torch.float32)
    fig = plot_report(dataclasses.replace(report_data, logits=logits))
    renderer = drawn(fig)
    ax = next(a for a in fig.get_axes() if "top-5" in a.get_title())
    rows = [t for t in ax.texts if t.get_text() != "UNTRAINED"]  # the watermark crosses the panel on purpose
    probabilities = torch.softmax(logits, -1)[0, list(reversed(longest))]
    shown = [" ".join(t.get_text().split()) for t in rows]
    assert shown == [f"{p:.1%} {class_name(i)} ({i})" for p, i in zip(probabilities, reversed(longest))]
    texts, bars = [t.get_window_extent(renderer) for t in rows], [b.get_window_extent(renderer) for b in ax.patches]
    assert len(bars) == 5 and all(ax.get_window_extent(renderer).contains(b.x0 + 1, b.y0 + 1) for b in texts)
    for i, (text, bar) in enumerate(zip(texts, bars)):
        assert bar.y0 <= text.y0 + 2 and text.y1 <= bar.y1 + 2, f"row {i}: the bar does not lie behind its text"
        for other_text, other_bar in zip(texts[i + 1:], bars[i + 1:]):
            assert not text.overlaps(other_text) and not bar.overlaps(other_bar), f"row {i} runs into a later row"
    widths = torch.tensor([b.width for b in bars], dtype=torch.float32)
    torch.testing.assert_close(widths / widths[0], probabilities / probabilities[0], rtol=0.02, atol=0.01)


def test_title_names_untrained_weights_and_only_the_architecture(report_data):
    fig = plot_report(report_data)
    title = fig._suptitle
    assert title.get_text().startswith(f"{sample_images()[0].name} - UNTRAINED weights (random init, seed 0) - "
                                       "architecture vit_tiny_patch16_224")
    assert title.get_color() == "red"
    trained = dataclasses.replace(report_data, provenance=Provenance(TINY + ".augreg_in21k_ft_in1k", "hub cache", True))
    title = plot_report(trained)._suptitle
    assert "UNTRAINED" not in title.get_text() and title.get_color() == "black"


def test_summary_records_query_layer_crop_and_warnings(tiny, tmp_path, capsys):
    panorama = tmp_path / "panorama.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 3000, 3), dtype=np.uint8)).save(panorama)
    assert report(panorama, tmp_path / "out", "--query", "3,4", "--layer", "2") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["query"] == [3, 4] and summary["layer"] == 2
    assert summary["image_size"] == [3000, 400]
    config = preprocess(panorama, tiny).data_config
    assert summary["crop_box"] == pytest.approx(list(crop_box((3000, 400), config)), abs=0.01)
    left, top, right, bottom = summary["crop_box"]
    redrawn = load_image(panorama).resize((224, 224), Image.BICUBIC, box=(left, top, right, bottom))
    difference = np.abs(np.asarray(redrawn, float) - np.asarray(preprocess(panorama, tiny).crop, float)).mean()
    assert difference < 1.0, "the recorded box is not the part of the image the model saw"
    assert len(summary["warnings"]) == 1 and "drops 88% of the image's width" in summary["warnings"][0]
    assert "warning: the centre crop drops 88%" in capsys.readouterr().err


def test_small_picture_warns_and_ordinary_photo_does_not(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10), (200, 30, 30)).save(small)
    assert report(small, tmp_path / "a") == 0
    warnings = json.loads((tmp_path / "a" / "summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "upscaled 24.8x" in warnings[0]
    assert report(sample_images()[0], tmp_path / "b") == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["warnings"] == []


def test_report_never_needs_jupyter(tmp_path):
    """The CLI report runs where no notebook package can be imported (a plain `pip install vit-inspect`)."""
    code = textwrap.dedent(f"""
        import sys
        class NoNotebooks:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("IPython", "ipykernel", "ipywidgets", "jupyter", "jupyter_client",
                                          "jupyter_core", "nbformat", "nbclient", "notebook", "jupyterlab"):
                    raise ImportError(f"{{name}} is not installed")
        sys.meta_path.insert(0, NoNotebooks())
        from vit_inspect.cli import main
        sys.exit(main(["report", {str(sample_images()[0])!r}, "--out", {str(tmp_path / "out")!r},
                       "--model", {TINY!r}, "--weights", "random"]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "report.png").exists()


def test_twelve_heads_get_panels_large_enough_to_read(report_data):
    """ViT-B has 12 heads: each panel keeps a readable map and a two-line title that no neighbour overlaps."""
    from vit_inspect import create_untrained
    twelve = create_untrained(TINY, seed=0, num_heads=12)  # 192 / 12 = 16 per head, like ViT-B's 12 heads
    fig = plot_report(compute_report(sample_images()[1], twelve, random_provenance()))
    renderer = drawn(fig)
    heads = [ax for ax in fig.get_axes() if re.search(r"\bhead \d+: max", ax.get_title())]
    assert len(heads) == 12
    titles = [ax.title.get_window_extent(renderer) for ax in heads]
    for ax, title in zip(heads, titles):
        assert ax.get_window_extent(renderer).width >= 120, f"{ax.get_title()!r}: the map is too small to read"
        assert ax.get_title().count("\n") == 1, f"{ax.get_title()!r}: wrapped beyond two lines"
    assert not any(a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:]), "head titles overlap"
