"""`vit-inspect report --query/--layer` with attention analyses, and `vit-inspect distance`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vit_inspect import load_vit, preprocess, sample_images
from vit_inspect.analysis import attention_rollout, grid_argmax, mean_attention_distance, rollout_to_grid
from vit_inspect import capture
from vit_inspect.cli import main
from vit_inspect.report import compute_report

from .image_kinds import write_invalid_images

TINY = "vit_tiny_patch16_224"  # 12 blocks, 3 heads, 14 x 14 patches


@pytest.fixture(scope="module")
def tiny():
    return load_vit(TINY, weights="random", verbose=False)


@pytest.fixture(scope="module")
def invalid(tmp_path_factory):
    return write_invalid_images(tmp_path_factory.mktemp("invalid"))


def report(image, out, *extra) -> int:
    return main(["report", str(image), "--out", str(out), "--model", TINY, "--weights", "random", *extra])


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    return err.splitlines()[-1] if err else ""


def test_report_adds_distance_and_rollout_argmax(tiny, tmp_path):
    image = sample_images()[0]
    assert report(image, tmp_path / "out", "--query", "2,11", "--layer", "5") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    captured = capture(tiny.model, preprocess(image, tiny.model).tensor)
    attention = captured["attention"]  # (1, L, H, N, N)
    expected_distance = mean_attention_distance(attention, (14, 14), 16, 1)[0]  # (L, H)
    expected_argmax = grid_argmax(rollout_to_grid(attention_rollout(attention), (14, 14), 1))[0]
    assert len(summary["attention_distance"]) == 12 and {len(r) for r in summary["attention_distance"]} == {3}
    torch.testing.assert_close(torch.tensor(summary["attention_distance"]), expected_distance)
    assert summary["rollout_argmax_patch"] == expected_argmax.tolist()
    assert summary["top5"][0]["index"] == int(captured["logits"].argmax())
    assert Image.open(tmp_path / "out" / "report.png").size[0] > 2000


def test_report_runs_the_model_once_and_keeps_the_chosen_query(tiny):
    calls = []
    handle = tiny.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        data = compute_report(sample_images()[1], tiny.model, tiny.provenance, query=(0, 13), layer=11)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert data.extra["query"] == (0, 13) and data.extra["layer"] == 11
    assert data.extra["query_maps"].shape == (3, 14, 14)
    assert data.extra["pos_embed_similarity"].shape == (14, 14, 14, 14)


@pytest.mark.parametrize("args, words", [
    (["--query", "14,0"], ["--query 14,0", "14x14"]),
    (["--query", "0,-1"], ["--query 0,-1", "14x14"]),
    (["--query", "3"], ["ROW,COL"]),
    (["--query", "a,b"], ["ROW,COL"]),
    (["--layer", "12"], ["--layer 12", "0..11"]),
    (["--layer", "-1"], ["--layer -1", "0..11"]),
])
def test_bad_query_or_layer_is_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    assert report(sample_images()[0], tmp_path / "out", *args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vit-inspect: error:") and "\n" not in err
    assert all(word in err for word in words)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for path in sample_images()[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image, skipped by suffix")
    return folder


def test_distance_over_a_folder_writes_json(tiny, photo_folder, tmp_path, capsys):
    out = tmp_path / "sub" / "distance.json"
    assert main(["distance", str(photo_folder), "--out", str(out), "--model", TINY,
                 "--weights", "random", "--batch-size", "2"]) == 0
    result = json.loads(out.read_text())
    per_image = [mean_attention_distance(capture(tiny.model, preprocess(p, tiny.model).tensor)["attention"],
                                         (14, 14), 16, 1)[0] for p in sorted(photo_folder.glob("*.*g"))]
    torch.testing.assert_close(torch.tensor(result["attention_distance"]), torch.stack(per_image).mean(dim=0))
    assert result["num_images"] == 3 and result["weights"]["trained"] is False
    assert result["grid"] == [14, 14] and result["patch_size"] == 16
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed and "block 11" in printed


def test_distance_errors_are_one_line(invalid, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(sample_images()[0], bad / "a_good.png")
    shutil.copy(invalid["truncated_png"], bad / "b_truncated.png")
    cases = [(tmp_path / "missing", "no such folder"), (empty, "no image files"),
             (sample_images()[0], "is not a folder"), (bad, "b_truncated.png")]
    for folder, words in cases:
        assert main(["distance", str(folder), "--model", TINY, "--weights", "random"]) == 1
        line = last_error_line(capsys)
        assert line.startswith("vit-inspect: error:") and words in line
    assert main(["distance", str(bad), "--batch-size", "0", "--model", TINY]) == 1
    assert "--batch-size 0" in last_error_line(capsys)


def test_entry_point_prints_no_traceback_on_a_bad_image_in_the_folder(invalid, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(invalid["not_an_image"], folder / "fake.jpg")
    result = subprocess.run([sys.executable, "-m", "vit_inspect", "distance", str(folder), "--model", TINY,
                             "--weights", "random"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vit-inspect: error:")
    assert "fake.jpg" in result.stderr
