"""Notebook 11's module: fine_tune on copies, the parameter table, the CNN control, the sweeps and their tables."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import cli_error_before_torch
from tests.mutation import fails, passes
from vit_inspect import fine_tuning
from vit_inspect.cli import main
from vit_inspect.errors import VitInspectError
from vit_inspect.fine_tuning import (build_cnn, changed_parameters, fine_tune, load_sweep, parameter_count,
                                     reuse_table, per_class, stratified_indices, subset)
from vit_inspect.position_embeddings import resample_pos_embed
from vit_inspect.training import ViTSpec, build_vit, load_dataset, untrained_like

K = 3


@pytest.fixture(scope="module")
def digits_vit():
    """notebook 09's architecture with every parameter random (none constant), so a change shows anywhere."""
    return untrained_like(build_vit(ViTSpec()), seed=1)


def pictures(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 crops (n, 3, size, size) and labels 0..K-1, every class present."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)  # (n, 3, S, S)
    return images, torch.arange(n) % K  # (n,)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# ---------------------------------------------------------------- checks (each used by a mutation test too)


def check_probe(model: torch.nn.Module) -> None:
    """Probe mode: a K-way head, the only part that changed; the caller's model exactly as it was."""
    before = state(model)
    images, labels = pictures(12, 32)
    tuned, history = fine_tune(model, images, labels, mode="probe", epochs=2, seed=0)
    assert tuned(torch.zeros(2, 3, 32, 32)).shape == (2, K), "the head must have one output per class in labels"
    changed = changed_parameters(model, tuned)
    assert not any(changed.values()), f"probe mode changed the backbone: {[n for n, c in changed.items() if c][:3]}"
    assert not torch.equal(tuned.head.weight, fine_tuning.prepared_copy(model, 32, K).head.weight), \
        "the new head was not trained"
    assert history["train_loss"].shape == (2,) and "test_accuracy" not in history
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items()), \
        "fine_tune changed the caller's model"


def check_full_changes_the_caller_model_not(model: torch.nn.Module) -> None:
    before = state(model)
    images, labels = pictures(12, 32)
    tuned = fine_tune(model, images, labels, mode="full", epochs=1, seed=0, reset_head=False).model
    assert any(changed_parameters(model, tuned).values()), "full mode trained nothing"
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items()), \
        "fine_tune changed the caller's model"


def check_higher_resolution(model: torch.nn.Module) -> None:
    """At 48 px (12x12 patches) the copy's position embedding is notebook 02's interpolation of the 8x8 one."""
    images, labels = pictures(6, 48)
    tuned = fine_tune(model, images, labels, mode="probe", epochs=1, seed=0).model
    expected = resample_pos_embed(model, (12, 12))  # (1, 1 + 144, D)
    assert tuned.pos_embed.shape == expected.shape, f"pos_embed {tuple(tuned.pos_embed.shape)} not on a 12x12 grid"
    assert torch.allclose(tuned.pos_embed, expected), "the position embedding was not interpolated"
    assert tuned(torch.zeros(1, 3, 48, 48)).shape == (1, K)


def test_probe_trains_only_a_fresh_head(digits_vit):
    passes(check_probe, digits_vit)


def test_mutation_head_not_replaced(digits_vit, monkeypatch):
    real = fine_tuning.prepared_copy
    monkeypatch.setattr(fine_tuning, "prepared_copy", lambda model, size, k: real(model, size, None))
    fails(check_probe, digits_vit)


def test_mutation_backbone_not_frozen(digits_vit, monkeypatch):
    monkeypatch.setattr(fine_tuning, "set_trainable", lambda model, mode: model.requires_grad_(True))
    fails(check_probe, digits_vit)


def test_full_mode_leaves_the_caller_model_as_it_was(digits_vit):
    passes(check_full_changes_the_caller_model_not, digits_vit)


def test_mutation_caller_model_changed(digits_vit, monkeypatch):
    monkeypatch.setattr(fine_tuning, "prepared_copy", lambda model, size, k: model)  # trains the caller's model
    fails(check_full_changes_the_caller_model_not, copy.deepcopy(digits_vit))


def test_higher_resolution_interpolates_the_position_embedding(digits_vit):
    passes(check_higher_resolution, digits_vit)


def test_mutation_position_embedding_not_interpolated(digits_vit, monkeypatch):
    def stretched_input_only(model, img_size):  # timm's dynamic size: runs, but pos_embed stays 8x8
        bigger = copy.deepcopy(model)
        bigger.patch_embed.img_size, bigger.dynamic_img_size = (img_size, img_size), True
        bigger.patch_embed.strict_img_size, bigger.patch_embed.dynamic_img_pad = False, False
        bigger.patch_embed.flatten, bigger.patch_embed.output_fmt = False, "NHWC"
        return bigger
    monkeypatch.setattr(fine_tuning, "model_at_resolution", stretched_input_only)
    fails(check_higher_resolution, digits_vit)


def test_fine_tune_refuses_a_bad_mode_and_labels(digits_vit):
    images, labels = pictures(6, 32)
    with pytest.raises(VitInspectError, match="mode must be one of probe, full"):
        fine_tune(digits_vit, images, labels, mode="linear", epochs=1, seed=0)
    with pytest.raises(VitInspectError, match="0..K-1"):
        fine_tune(digits_vit, images, labels + 5, epochs=1, seed=0)


# ---------------------------------------------------------------- any timm ViT: the table, ViT-B/16's counts


def test_parameter_table_on_vit_tiny(tiny):
    table = reuse_table(tiny, 7)
    D = tiny.embed_dim
    assert table["head"] == {"parameters": D * 7 + 7, "kept": 0, "replaced": D * 7 + 7,
                             "trained (probe)": D * 7 + 7, "trained (full)": D * 7 + 7}
    total = parameter_count(tiny) - tiny.head.weight.numel() - tiny.head.bias.numel() + D * 7 + 7
    assert sum(row["parameters"] for row in table.values()) == total
    assert sum(row["trained (probe)"] for row in table.values()) == D * 7 + 7
    assert table["position embedding"]["kept"] == tiny.pos_embed.numel()


def test_probe_on_vit_tiny_keeps_its_backbone(tiny):
    images, labels = pictures(6, 224)
    tuned = fine_tune(tiny, images, labels, mode="probe", epochs=1, seed=0).model
    changed = changed_parameters(tiny, tuned)
    assert tuned.head.out_features == K and not any(changed.values()) and len(changed) > 100


# ---------------------------------------------------------------- the control and the sweeps


def test_cnn_has_about_the_vit_parameter_count():
    ratio = parameter_count(build_cnn()) / parameter_count(build_vit())
    assert 0.75 <= ratio <= 1.25, ratio
    assert build_cnn(5)(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_subsets_are_stratified_seeded_and_tiled():
    labels = torch.arange(200) % 10  # (200,)
    chosen = stratified_indices(labels, 0.1, seed=0)
    assert torch.equal(torch.bincount(labels[chosen]), torch.full((10,), 2))
    assert not torch.equal(chosen, stratified_indices(labels, 0.1, seed=1))
    assert torch.equal(torch.bincount(labels[per_class(labels, 3, 0)]), torch.full((10,), 3))
    data = load_dataset("digits")
    tiled = subset(data, 0.05, seed=0, min_epoch_images=300)
    assert len(tiled.train_labels) >= 300 and len(tiled.train_labels.unique()) == 10
    assert torch.equal(tiled.test_labels, data.test_labels)


@pytest.mark.parametrize("name, rows, ways", [("data_hunger", "fractions", ["vit", "cnn", "logistic regression"]),
                                              ("transfer", "k", ["linear probe", "full fine-tune", "from scratch"])])
def test_shipped_sweeps_have_three_seeds_per_row(name, rows, ways):
    table, recipe = load_sweep(name)
    for way in ways:
        assert table[way].shape == (len(table[rows]), len(recipe["seeds"])) and len(recipe["seeds"]) >= 3
        assert ((table[way] >= 0) & (table[way] <= 1)).all()


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("args, words", [
    (["--dataset", "nowhere"], ["--dataset nowhere", "no such folder"]),
    (["--dataset", "README.md"], ["--dataset README.md", "is a file"]),
    (["--mode", "linear"], ["--mode linear", "probe, full"]),
    (["--labels-per-class", "0"], ["--labels-per-class 0", "at least 1"]),
    (["--out", "README.md"], ["--out README.md", ".safetensors"]),
])
def test_finetune_argument_errors_are_one_line_before_torch(args, words):
    err = cli_error_before_torch("finetune", args)
    assert all(w in err for w in words), err


def test_finetune_a_folder_on_vit_tiny_never_overwrites(class_folders, tmp_path, capsys):
    out = tmp_path / "tuned.safetensors"
    out.write_bytes(b"a student's file")
    args = ["finetune", "--dataset", str(class_folders), "--model", "vit_tiny_patch16_224", "--weights", "random",
            "--epochs", "1", "--out", str(out)]
    assert main(args) == 1 and out.read_bytes() == b"a student's file"
    assert "--force" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*args, "--force"]) == 0
    printed = capsys.readouterr().out
    assert "12 training images (all per class, 3 classes), 3 held out; probe for 1 epochs" in printed
    from safetensors.torch import load_file
    assert load_file(str(out))["head.weight"].shape == (3, 192)


def test_finetune_digits_probe_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "digits.safetensors"
    assert main(["finetune", "--labels-per-class", "2", "--epochs", "1", "--out", str(out)]) == 0
    from vit_inspect.weights import load_vit
    tuned, provenance = load_vit(weights=out)
    shipped = load_vit(weights="digits").model
    changed = changed_parameters(shipped, tuned)
    assert provenance.trained and changed["head.weight"] and len(changed) > 50
    assert not any(c for name, c in changed.items() if not name.startswith("head")), "probe changed the backbone"
    assert "20 training images (2 per class, 10 classes), 360 held out; probe for 1 epochs" in capsys.readouterr().out


def test_compare_modes_on_a_folder_with_vit_tiny(tiny, class_folders):
    """Notebook 11's pretrained ViT-B/16 cell (network only) runs this path: here on a folder, untrained ViT-Tiny."""
    data = load_dataset(class_folders, img_size=224)
    accuracies = fine_tuning.compare_modes(tiny, data, per_class_count=2, epochs=1)
    assert list(accuracies) == ["linear probe", "full fine-tune"]
    assert all(0 <= float(a) <= 1 and a.ndim == 0 for a in accuracies.values())
    resized = fine_tuning.resize_pixels(data.test_images[:, :, :32, :32], 224)  # (3, 3, 224, 224)
    assert resized.shape == (3, 3, 224, 224) and resized.dtype == torch.uint8
