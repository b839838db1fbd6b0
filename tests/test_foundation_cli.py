"""`vit-inspect report`: correct report for valid images, one-line errors otherwise."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit_inspect import class_name, load_vit, preprocess, sample_images, top_k
from vit_inspect.cli import main



TINY = "vit_tiny_patch16_224"


def report(image, out, *extra) -> int:
    return main(["report", str(image), "--out", str(out), "--model", TINY, "--weights", "random", *extra])


@pytest.mark.parametrize("kind", ["rgba", "palette_transparent", "grey16", "cmyk", "bilevel",
                                  "float", "exif_rotated", "animated"])
def test_report_for_each_valid_kind(valid, tmp_path, kind):
    assert report(valid[kind], tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    model, _ = load_vit(TINY, weights="random")
    with torch.inference_mode():
        expected = top_k(model(preprocess(valid[kind], model).tensor)).rows(0)
    assert [row["index"] for row in summary["top5"]] == [row["index"] for row in expected]
    for row, want in zip(summary["top5"], expected):
        assert row["label"] == class_name(row["index"])
        assert row["probability"] == pytest.approx(want["probability"], rel=1e-4)
    assert summary["input_size"] == [3, 224, 224] and summary["model"] == TINY
    assert summary["weights"]["trained"] is False and "UNTRAINED" in summary["weights"]["label"]
    assert Image.open(tmp_path / "out" / "report.png").size[0] > 500


@pytest.mark.parametrize("kind", ["not_an_image", "empty", "truncated_png", "truncated_jpg",
                                  "missing", "directory", "bomb"])
def test_invalid_image_exit_1_one_line(invalid, tmp_path, capsys, kind):
    assert report(invalid[kind], tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vit-inspect: error:") and str(invalid[kind]) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["truncated_jpg", "bomb"])
def test_entry_point_prints_no_traceback(invalid, tmp_path, kind):
    result = subprocess.run([sys.executable, "-m", "vit_inspect", "report", str(invalid[kind]),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_work.txt").write_text("keep me")
    assert report(sample_images()[0], out) == 1
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["my_work.txt"]
    assert report(sample_images()[0], out, "--force") == 0
    assert (out / "my_work.txt").read_text() == "keep me" and (out / "summary.json").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("x")
    assert report(sample_images()[0], target) == 1
    assert "not a directory" in capsys.readouterr().err and target.read_text() == "x"


def test_bad_weights_file_is_one_line(tmp_path, capsys):
    code = main(["report", str(sample_images()[0]), "--out", str(tmp_path / "o"),
                 "--model", TINY, "--weights", str(tmp_path / "none.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "none.safetensors" in err and "\n" not in err


def test_top_k_names_and_order():
    logits = torch.zeros(2, 1000)
    logits[0, 538], logits[0, 7], logits[1, 3] = 9.0, 5.0, 4.0
    result = top_k(logits, k=3)
    assert result.indices[0, :2].tolist() == [538, 7] and result.indices[1, 0] == 3
    assert result.names[0][0] == "dome"
    assert torch.all(result.probs[:, :-1] >= result.probs[:, 1:])
    torch.testing.assert_close(result.probs[0, 0], logits[0].softmax(-1)[538])


def test_download_offline_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download"]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot reach the Hugging Face hub" in err and "\n" not in err


def test_download_prints_the_path_to_pass(monkeypatch, tmp_path, capsys):
    """Network simulated: the hub client is replaced by a copy into --to."""
    def fake_download(repo_id, filename, local_dir=None):
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return str(target)

    monkeypatch.setattr("vit_inspect.weights.hub_reachable", lambda: True)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    assert main(["download", "--to", str(tmp_path / "w")]) == 0
    assert f"weights=: {tmp_path / 'w' / 'model.safetensors'}" in capsys.readouterr().out
