"""`vit-inspect report|distance|download`: correct output for valid input, one-line errors otherwise."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit_inspect import capture, class_name, load_vit, mean_attention_distance, preprocess, sample_images, top_k
from vit_inspect import weights as weights_module
from vit_inspect.cli import join_negative_values, main

from .conftest import TINY, cli_error_before_torch


def report(image, out, *extra) -> int:
    return main(["report", str(image), "--out", str(out), "--model", TINY, "--weights", "random", *extra])


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    return err.splitlines()[-1] if err else ""


def test_help_and_argument_errors_import_neither_torch_nor_timm():
    code = ("import sys\nfrom vit_inspect.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['report', 'x.png', '--out', 'o', '--query', '1'])\n"
            "assert not {'torch', 'timm'} & set(sys.modules), sorted(m for m in sys.modules if 'torch' in m)[:3]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "expected ROW,COL" in result.stderr and "usage: vit-inspect" in result.stdout


def test_values_that_start_with_a_minus_reach_the_checks():
    assert join_negative_values(["report", "a.png", "--query", "-1,3", "--layer", "-2", "--out", "o"]) == \
        ["report", "a.png", "--query=-1,3", "--layer=-2", "--out", "o"]
    assert join_negative_values(["--query", "--force"]) == ["--query=--force"]



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


def test_download_offline_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download"]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot download: HF_HUB_OFFLINE=1 is set" in err and "\n" not in err


def test_download_prints_the_path_to_pass(monkeypatch, tmp_path, capsys):
    """Network simulated: the hub client is replaced by a copy into --to."""
    def fake_download(repo_id, filename, local_dir=None):
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return str(target)

    monkeypatch.setattr("vit_inspect.hub.hub_reachable", lambda: True)  # where `download` looks it up
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    assert main(["download", "--to", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert f"--weights {tmp_path / 'w' / 'model.safetensors'}" in out and 'weights="' not in out
    assert f"VIT_INSPECT_WEIGHTS={tmp_path / 'w' / 'model.safetensors'}" in out


def test_messages_use_command_line_syntax(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["report", str(sample_images()[0]), "--out", str(tmp_path / "a"), "--model", TINY,
                 "--weights", "pretrained"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--weights DIR/model.safetensors" in err and 'weights="' not in err and "HF_HUB_OFFLINE" in err
    assert main(["report", str(sample_images()[0]), "--out", str(tmp_path / "b"), "--model", TINY]) == 0
    banner = capsys.readouterr().err
    assert "UNTRAINED WEIGHTS" in banner and "--weights DIR/model.safetensors" in banner


def test_weights_variable_errors_are_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIT_INSPECT_WEIGHTS", str(tmp_path / "nowhere"))
    assert main(["report", str(sample_images()[0]), "--out", str(tmp_path / "o"), "--model", TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vit-inspect: error: VIT_INSPECT_WEIGHTS={tmp_path / 'nowhere'}: ") and "\n" not in err


# ---------------------------------------------------------------- report arguments

@pytest.mark.parametrize("args, words", [
    (["--query", "14,0"], ["--query 14,0", "14x14", "rows 0..13"]),
    (["--query", "0,-1"], ["--query 0,-1", "numbered from 0"]),
    (["--query", "-1,3"], ["--query -1,3", "numbered from 0"]),
    (["--query", "3"], ["ROW,COL"]),
    (["--query", "a,b"], ["ROW,COL"]),
    (["--layer", "12"], ["--layer 12", "0..11"]),
    (["--layer", "-1"], ["--layer -1", "numbered from 0"]),
    (["--layer", "x"], ["--layer x", "integer"]),
])
def test_bad_query_or_layer_is_one_line_before_any_weights(tmp_path, capsys, monkeypatch, args, words):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were built before the arguments were checked")
    monkeypatch.setattr(weights_module, "create_untrained", no_weights)
    monkeypatch.setattr(weights_module, "load_vit", no_weights)
    assert report(sample_images()[0], tmp_path / "out", *args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vit-inspect: error:") and "\n" not in err
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- distance

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
    per_image = [mean_attention_distance(capture(tiny, preprocess(p, tiny).tensor)["attention"],
                                         (14, 14), 1, 16)[0] for p in sorted(photo_folder.glob("*.*g"))]
    torch.testing.assert_close(torch.tensor(result["attention_distance"]), torch.stack(per_image).mean(dim=0))
    assert result["num_images"] == 3 and result["weights"]["trained"] is False
    assert result["grid"] == [14, 14] and result["patch_size"] == 16
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed and "block 11" in printed


def test_distance_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(tmp_path / "missing", "no such folder"), (empty, "no image files"),
             (sample_images()[0], "is not a folder")]
    for folder, words in cases:
        assert main(["distance", str(folder), "--model", TINY, "--weights", "random"]) == 1
        line = last_error_line(capsys)
        assert line.startswith("vit-inspect: error:") and words in line
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(sample_images()[0], good)
    assert main(["distance", str(good), "--batch-size", "0", "--model", TINY]) == 1
    assert "--batch-size 0" in last_error_line(capsys)


@pytest.fixture
def folder_with_bad_files(invalid, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, source in (("a_good.png", sample_images()[0]), ("b_truncated.png", invalid["truncated_png"]),
                         ("c_good.jpg", sample_images()[1]), ("d_fake.jpg", invalid["not_an_image"])):
        shutil.copy(source, folder / name)
    return folder


def test_distance_lists_and_skips_bad_files_and_counts_them(tiny, folder_with_bad_files, tmp_path, capsys):
    out = tmp_path / "distance.json"
    code = main(["distance", str(folder_with_bad_files), "--out", str(out), "--model", TINY,
                 "--weights", "random", "--batch-size", "2"])
    assert code == 2, "the exit code is the number of skipped files"
    result = json.loads(out.read_text())
    assert result["num_images"] == 2 and result["num_skipped"] == 2
    assert [Path(entry["file"]).name for entry in result["skipped"]] == ["b_truncated.png", "d_fake.jpg"]
    assert all(entry["file"] in entry["reason"] for entry in result["skipped"])
    good = [folder_with_bad_files / "a_good.png", folder_with_bad_files / "c_good.jpg"]
    per_image = [mean_attention_distance(capture(tiny, preprocess(p, tiny).tensor)["attention"], (14, 14), 1, 16)[0]
                 for p in good]
    torch.testing.assert_close(torch.tensor(result["attention_distance"]), torch.stack(per_image).mean(dim=0))
    err = capsys.readouterr().err
    assert "skipped: " in err and "b_truncated.png" in err and "d_fake.jpg" in err
    assert "skipped 2 of 4 files" in err


def test_distance_strict_stops_at_the_first_bad_file(folder_with_bad_files, capsys):
    assert main(["distance", str(folder_with_bad_files), "--strict", "--model", TINY, "--weights", "random"]) == 1
    line = last_error_line(capsys)
    assert line.startswith("vit-inspect: error:") and "b_truncated.png" in line and "d_fake.jpg" not in line


def test_entry_point_prints_no_traceback_on_a_bad_image_in_the_folder(invalid, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(invalid["not_an_image"], folder / "fake.jpg")
    result = subprocess.run([sys.executable, "-m", "vit_inspect", "distance", str(folder), "--model", TINY,
                             "--weights", "random"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vit-inspect: error:") and "none of the 1 image files could be read" in last
    assert "fake.jpg" in result.stderr


# ---------------------------------------------------------------- train

@pytest.mark.parametrize("args, words", [
    (["--dataset", "nowhere"], ["--dataset nowhere", "digits, mnist", "no such folder"]),
    (["--dataset", "README.md"], ["--dataset README.md", "is a file"]),
    (["--epochs", "0"], ["--epochs 0", "at least 1"]),
    (["--epochs", "ten"], ["--epochs ten", "integer"]),
    (["--seed", "-1"], ["--seed -1", "at least 0"]),
    (["--out", "weights.pt"], ["--out weights.pt", ".safetensors"]),
    (["--out", "tests"], ["--out tests", "directory"]),
    (["--out", "pyproject.toml"], ["--out pyproject.toml", ".safetensors"]),
    (["--ablations", "table.csv"], ["--ablations table.csv", ".json"]),
    (["--ablations", "tests"], ["--ablations tests", "directory"]),
])
def test_train_argument_errors_are_one_line_before_torch(args, words):
    err = cli_error_before_torch("train", args)
    assert all(w in err for w in words), err


def test_train_never_overwrites_without_force(class_folders, tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"a student's file")
    assert main(["train", "--dataset", str(class_folders), "--epochs", "1", "--out", str(out)]) == 1
    assert "--force" in last_error_line(capsys) and out.read_bytes() == b"a student's file"
    assert main(["train", "--dataset", str(class_folders), "--epochs", "1", "--out", str(out), "--force"]) == 0
    model, provenance = load_vit(weights=out)
    assert provenance.trained_on == str(class_folders) and model.num_classes == 3


def test_train_on_a_folder_prints_the_accuracy_and_how_to_load(class_folders, tmp_path, capsys):
    out = tmp_path / "sub" / "folder.safetensors"
    assert main(["train", "--dataset", str(class_folders), "--epochs", "2", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 training and 3 test images, 3 classes" in printed and "2 epochs" in printed
    assert "test accuracy" in printed and f"load_vit(weights={str(out)!r})" in printed
    assert "shipped" not in printed  # nothing ships for a folder of one's own
    from vit_inspect import training_metadata
    info = training_metadata(out)
    assert info["epochs"] == 2 and info["train_config"]["seed"] == 3 and info["class_names"] == ["circle", "square", "stripe"]
    from vit_inspect.weights import current_umask
    assert out.stat().st_mode & 0o777 == 0o644 & ~current_umask(), "a file to share, not safetensors' 0600"


def test_train_default_out_is_named_after_the_dataset(tmp_path):
    from vit_inspect.cli import train_out
    assert train_out("digits", None, False) == Path("vit_digits.safetensors")
    assert train_out(str(tmp_path / "flowers"), None, False) == Path("vit_flowers.safetensors")


def test_train_digits_compares_with_the_shipped_weights(tmp_path, capsys):
    out = tmp_path / "digits.safetensors"
    assert main(["train", "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1437 training and 360 test images" in printed
    assert "the shipped weights (another recipe) have" in printed and "points from them" in printed


def test_train_a_torchvision_set_offline_is_one_line(monkeypatch, tmp_path, capsys):
    import torchvision.datasets

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "m.safetensors")]) == 1
    line = last_error_line(capsys)
    assert line.startswith("vit-inspect: error: --dataset mnist") and "network" in line
    assert "use --dataset digits" in line and 'dataset="' not in line, "command-line terms on the command line"
    assert not (tmp_path / "m.safetensors").exists()


def test_train_on_a_folder_of_one_class_names_the_option(tmp_path, capsys):
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    assert main(["train", "--dataset", str(tmp_path / "one"), "--out", str(tmp_path / "w.safetensors")]) == 1
    line = last_error_line(capsys)
    assert line.startswith(f"vit-inspect: error: --dataset {tmp_path / 'one'}: ") and "at least 2" in line


def test_train_accepts_exactly_the_datasets_training_loads_by_name(tmp_path, monkeypatch):
    """The names `--dataset` accepts, lists and offers in --help are those `load_dataset` knows."""
    from vit_inspect import training
    from vit_inspect.cli import VitInspectError, build_parser, check_dataset

    monkeypatch.chdir(tmp_path)  # no folder here is named like a dataset
    loaded_by_name = [training.DIGITS, *training.TORCHVISION_DATASETS]
    for name in loaded_by_name:
        check_dataset(name)
    with pytest.raises(VitInspectError) as caught:
        check_dataset("svhn")
    listed = str(caught.value).split("not one of ", 1)[1].split(", and ")[0]
    assert listed.split(", ") == loaded_by_name, listed
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert " | ".join(loaded_by_name) in " ".join(train_help.split())


def test_report_on_the_shipped_digits_model_names_digit_classes(tmp_path):
    assert main(["report", str(sample_images()[0]), "--out", str(tmp_path / "r"), "--weights", "digits"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["weights"]["trained_on"] == "digits" and summary["input_size"] == [3, 32, 32]
    assert [row["label"] for row in summary["top5"]] == [str(row["index"]) for row in summary["top5"]]


def test_train_writes_the_ablation_table_and_never_overwrites_one(class_folders, tmp_path, monkeypatch, capsys):
    from vit_inspect import training
    monkeypatch.setattr(training, "ABLATION_RECIPE", training.TrainConfig(epochs=1))  # a quick table
    table = tmp_path / "table.json"
    table.write_text("a lecturer's notes")
    args = ["train", "--dataset", str(class_folders), "--epochs", "1", "--out", str(tmp_path / "w.safetensors"),
            "--ablations", str(table)]
    assert main(args) == 1 and "--force" in last_error_line(capsys) and table.read_text() == "a lecturer's notes"
    assert not (tmp_path / "w.safetensors").exists(), "nothing is trained before the arguments are checked"
    assert main([*args, "--force"]) == 0
    written = training.load_ablations(table)
    assert list(written.accuracies) == list(training.ABLATIONS) and written.config == training.TrainConfig(epochs=1)
    assert all(len(written.accuracies[name]) == len(seeds) for name, seeds in written.seeds.items())
