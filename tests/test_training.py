"""Training a small ViT here: data routes, the recipe, and the analyses of notebook 09.

The model and its weights file are tested in test_small_vit.py; the learned claims
themselves (on the shipped weights) are in test_learned_claims.py.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from vit_inspect import (VitInspectError, ViTSpec, TrainConfig, TrainingData, build_vit, capture, class_token_maps,
                         confusion_matrix, curve_area, delete_patches, deletion_curve, deletion_curves, digits_writers,
                         first_block_distance, grid_size_of, importance_order, ink_ratio, linear_baseline, load_dataset,
                         load_trained, load_vit, mean_attention_distance, model_input, num_prefix_tokens_of,
                         patch_ink, pooled_features, predict_logits, preprocess, random_order, randomisation_curves,
                         randomise_top_blocks, randomised_maps, rank_correlation, run_ablations, save_trained, shipped_weights,
                         spec_of, train_vit, training_metadata, untrained_like, attention_rollout, rollout_to_grid)
from vit_inspect import training as training_module

SMALL = ViTSpec(embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.0)  # fast stand-in with the same layout
QUICK = TrainConfig(epochs=2, batch_size=32)


@pytest.fixture(scope="module")
def digits() -> TrainingData:
    return load_dataset("digits")


def subset(data: TrainingData, n_train: int, n_test: int) -> TrainingData:
    return data._replace(train_images=data.train_images[:n_train], train_labels=data.train_labels[:n_train],
                         test_images=data.test_images[:n_test], test_labels=data.test_labels[:n_test])


# ---------------------------------------------------------------- the data


def test_digits_split_is_stratified_seeded_and_disjoint(digits):
    assert digits.train_images.shape == (1437, 3, 32, 32) and digits.test_images.shape == (360, 3, 32, 32)
    assert digits.train_images.dtype == torch.uint8 and digits.class_names == tuple("0123456789")
    counts = torch.bincount(digits.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    again = load_dataset("digits")
    assert torch.equal(again.test_images, digits.test_images) and torch.equal(again.test_labels, digits.test_labels)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.test_labels, digits.test_labels)
    train_rows = {bytes(image.numpy()) for image in digits.train_images}
    # a few digits occur twice in the scans; almost all test images are unseen in training
    assert sum(bytes(image.numpy()) in train_rows for image in digits.test_images) < 5


def test_digits_are_what_preprocess_gives_for_the_scan(digits):
    """The training crops are exactly the model's own preprocessing of the 8x8 scans, white ink on black."""
    from sklearn.datasets import load_digits

    model = build_vit()
    scan = load_digits().images[0]  # (8, 8), 0..16
    image = Image.fromarray(np.round(scan * 255 / 16).astype(np.uint8), mode="L")
    x = preprocess(image, model).tensor  # (1, 3, 32, 32)
    all_inputs = model_input(model, torch.cat([digits.train_images, digits.test_images]))  # (n, 3, 32, 32)
    closest = (all_inputs - x).abs().flatten(1).amax(dim=1).min()
    assert closest == 0, "digit 0 must be in the data exactly as preprocess makes it"
    assert x.min() == -1 and x.max() > 0.5  # black background, bright ink


def test_folder_of_class_folders(class_folders):
    data = load_dataset(class_folders)
    assert data.class_names == ("circle", "square", "stripe")
    assert data.train_images.shape == (12, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    assert sorted(data.test_labels.tolist()) == [0, 1, 2]  # stratified: one of each class held out
    # class k's pixels were drawn around 80 k: the labels follow the folders
    brightness = data.train_images.float().mean(dim=(1, 2, 3))  # (n,)
    for label in range(3):
        chosen = brightness[data.train_labels == label]
        assert (chosen > 80 * label).all() and (chosen < 80 * label + 60).all()


def test_folder_errors_are_one_line(tmp_path):
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one_class / "only" / "a.png")
    lonely = tmp_path / "lonely"
    for name, count in (("a", 3), ("b", 1)):
        (lonely / name).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (4, 4)).save(lonely / name / f"{k}.png")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    cases = [(tmp_path / "missing", "no such folder"), (one_class, "at least 2"),
             (lonely, "cannot split"), (tmp_path / "flat", "sub-folder")]
    for folder, words in cases:
        with pytest.raises(VitInspectError, match=words) as caught:
            load_dataset(folder)
        message = str(caught.value)
        assert message.startswith(f'dataset="{folder}": ') and "\n" not in message
        assert "--" not in message, "a Python call's error names the argument, not a command-line option"


class FakeTorchvisionSet:
    """Stands in for a torchvision dataset class: records how it was called, never downloads."""
    calls: list = []

    def __init__(self, root, train, download):
        FakeTorchvisionSet.calls.append((type(self).__name__, root, train, download))
        size = 6 if train else 4
        self.targets = [k % 2 for k in range(size)]
        self.classes = ["even", "odd"]
        self.images = [Image.new("L", (28, 28), 40 * k) for k in range(size)]

    def __iter__(self):
        return iter(zip(self.images, self.targets))


@pytest.mark.parametrize("name, class_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                              ("cifar10", "CIFAR10")])
def test_torchvision_sets_by_name_use_their_official_split(monkeypatch, tmp_path, name, class_name):
    fake = type(class_name, (FakeTorchvisionSet,), {})
    monkeypatch.setattr(torchvision.datasets, class_name, fake)
    FakeTorchvisionSet.calls = []
    data = load_dataset(name, root=tmp_path)
    assert FakeTorchvisionSet.calls == [(class_name, str(tmp_path), True, True), (class_name, str(tmp_path), False, True)]
    assert data.train_images.shape == (6, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.split_seed is None and "official" in data.split and data.class_names == ("even", "odd")


def test_torchvision_set_without_network_is_one_clear_line(monkeypatch, tmp_path):
    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(VitInspectError) as caught:
        load_dataset("mnist", root=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith('dataset="mnist": ') and str(tmp_path) in message
    assert "network" in message and 'dataset="digits"' in message and "--" not in message


# ---------------------------------------------------------------- the recipe


def test_augment_identity_and_black_fill():
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    still = TrainConfig(max_rotation=0, max_scale=0, max_shift=0)
    torch.testing.assert_close(training_module.augment(pixels, still, generator), pixels.float() / 255)
    nearly = TrainConfig(max_rotation=1e-7, max_scale=1e-9, max_shift=1e-9)  # the affine path, all but identity
    torch.testing.assert_close(training_module.augment(pixels, nearly, generator), pixels.float() / 255,
                               rtol=0, atol=1e-4)
    shifted = training_module.augment(torch.full_like(pixels, 255), TrainConfig(max_rotation=0, max_scale=0,
                                                                                 max_shift=0.25), generator)
    assert shifted.min() == 0 and shifted.max() == 1  # black comes in from outside the image


def test_augmentation_is_a_rotation_a_scale_and_a_shift_within_the_limits():
    config = TrainConfig(max_rotation=30, max_scale=0.2, max_shift=0.1)
    theta = training_module.affine_matrices(500, config, torch.Generator().manual_seed(0))  # (500, 2, 3)
    linear, shift = theta[:, :, :2], theta[:, :, 2]  # (500, 2, 2), (500, 2)
    scale = linear.det().rsqrt()  # a rotation divided by the scale has determinant 1 / scale^2
    torch.testing.assert_close(linear @ linear.transpose(1, 2), torch.eye(2).expand(500, 2, 2) / scale[:, None, None] ** 2)
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]).rad2deg()  # (500,)
    assert angle.abs().max() <= 30 and angle.abs().max() > 25 and (angle > 0).any() and (angle < 0).any()
    assert (scale - 1).abs().max() <= 0.2 + 1e-6 and shift.abs().max() <= 0.2


def test_training_is_seeded_and_returns_the_history(digits):
    data = subset(digits, 256, 64)
    histories, models = [], []
    for _ in range(2):
        model = build_vit(SMALL, seed=0)
        histories.append(train_vit(model, data, QUICK, progress=False))
        models.append(model)
    first, second = histories
    assert set(first) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                          "pos_embed_similarity"}
    assert first["pos_embed_similarity"].shape == (2, 8, 8, 8, 8) and first["test_accuracy"].shape == (2,)
    for key in ("train_loss", "test_loss", "test_accuracy"):
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    torch.testing.assert_close(models[0].pos_embed, models[1].pos_embed, rtol=0, atol=0)
    assert not models[0].training and models[0].pos_embed.device.type == "cpu"
    logits = predict_logits(models[0], data.test_images)  # (64, 10)
    torch.testing.assert_close(first["test_accuracy"][-1],
                               (logits.argmax(-1) == data.test_labels).float().mean())
    other = build_vit(SMALL, seed=0)
    third = train_vit(other, data, dataclasses.replace(QUICK, seed=1), progress=False)
    assert not torch.equal(third["train_loss"], first["train_loss"])


def test_training_learns(digits):
    """240 steps in batches of 8 memorise most of 32 images: the loop, the loss and the labels fit together."""
    data = subset(digits, 32, 32)
    still = TrainConfig(epochs=60, batch_size=8, lr=1e-3, warmup_epochs=2, weight_decay=0, label_smoothing=0,
                        max_rotation=0, max_scale=0, max_shift=0)
    history = train_vit(build_vit(ViTSpec(depth=1)), data, still, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0] - 1.0, history["train_loss"][::10]
    assert history["train_accuracy"][-1] > 0.5, history["train_accuracy"][-10:]


def test_optimizer_leaves_position_embedding_and_norms_without_weight_decay():
    model = build_vit(SMALL)
    optimizer = training_module._optimizer(model, TrainConfig())
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "blocks.0.attn.qkv.weight" in names and "head.weight" in names
    assert not names & {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"}


def test_schedule_warms_up_then_decays_to_zero():
    model = build_vit(SMALL)
    config = TrainConfig(epochs=4, warmup_epochs=1, lr=1.0)
    optimizer = training_module._optimizer(model, config)
    schedule = training_module._schedule(optimizer, config, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.01


# ---------------------------------------------------------------- analyses


@pytest.fixture(scope="module")
def small_model():
    return build_vit(SMALL, seed=0)


def test_confusion_matrix_rows_are_true_classes():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)


def test_linear_baseline_on_the_same_split(digits):
    result = linear_baseline(subset(digits, 400, 100))
    assert result["predictions"].shape == (100,)
    torch.testing.assert_close(result["accuracy"], (result["predictions"] == digits.test_labels[:100]).double().mean())
    assert result["accuracy"] > 0.8  # pixels of digits are nearly linearly separable
    shuffled = subset(digits, 400, 100)
    shuffled = shuffled._replace(train_labels=shuffled.train_labels[torch.randperm(400, generator=torch.Generator().manual_seed(0))])
    assert linear_baseline(shuffled)["accuracy"] < 0.3, "it learns from the training labels only"


def test_pooled_features_are_what_the_head_reads(small_model, digits):
    pixels = digits.test_images[:5]
    features = pooled_features(small_model, pixels)  # (5, D)
    torch.testing.assert_close(small_model.head(features), predict_logits(small_model, pixels))
    tokens = small_model.forward_features(model_input(small_model, pixels))  # (5, N, D)
    torch.testing.assert_close(features, tokens[:, 0])  # the class token after the final norm


def test_class_token_maps_follow_the_captured_attention(small_model, digits):
    pixels = digits.test_images[:3]
    maps = class_token_maps(small_model, pixels)
    attention = capture(small_model, model_input(small_model, pixels))["attention"]  # (3, L, H, 65, 65)
    torch.testing.assert_close(maps["rollout"], rollout_to_grid(attention_rollout(attention), (8, 8), 1))
    by_hand = attention[:, -1, :, 0, 1:].mean(dim=1).reshape(3, 8, 8)  # (3, 8, 8), row-major patches
    torch.testing.assert_close(maps["last-layer attention"], by_hand)


def test_first_block_distance_is_the_first_layer_of_the_full_analysis(small_model, digits):
    pixels = digits.test_images[:4]
    attention = capture(small_model, model_input(small_model, pixels))["attention"]
    full = mean_attention_distance(attention, (8, 8), 1, 4).mean(dim=0)  # (L, H)
    torch.testing.assert_close(first_block_distance(small_model, pixels), full[0])


def test_patch_ink_and_ink_ratio():
    pixels = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    pixels[0, :, 0:4, 4:8] = 255  # patch (row 0, col 1) fully inked, with 4-pixel patches
    pixels[0, :, 4:6, 0:4] = 255  # patch (row 1, col 0) half inked
    ink = patch_ink(pixels, 4)
    assert torch.equal(ink, torch.tensor([[[0.0, 1.0], [0.5, 0.0]]]))
    ink[0, 1, 0] = 0
    maps = torch.tensor([[[1.0, 3.0], [1.0, 1.0]]])
    torch.testing.assert_close(ink_ratio(maps, ink), torch.tensor([3.0]))


def test_delete_patches_blackens_the_first_patches_of_the_order():
    pixels = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    order = torch.tensor([[1, 2, 0, 3], [3, 0, 1, 2]])  # patches of a 2x2 grid, row-major
    assert torch.equal(delete_patches(pixels, order, 0, 4), pixels)
    assert delete_patches(pixels, order, 4, 4).max() == 0
    one = delete_patches(pixels, order, 1, 4)
    assert one[0, :, 0:4, 4:8].max() == 0 and one[0].float().mean() == 150  # patch 1 = row 0, col 1
    assert one[1, :, 4:8, 4:8].max() == 0 and one[1].float().mean() == 150  # patch 3 = row 1, col 1


def test_orders():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert importance_order(maps).tolist() == [[1, 2, 3, 0]]
    first, again, other = random_order(3, 16, 0), random_order(3, 16, 0), random_order(3, 16, 1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first.sort(dim=1).values, torch.arange(16).expand(3, 16))


def test_deletion_curve_starts_from_the_intact_image_and_ends_black(small_model, digits):
    pixels, labels = digits.test_images[:6], digits.test_labels[:6]
    order = random_order(6, 64, 0)
    curve = deletion_curve(small_model, pixels, labels, order, steps=4)  # (6, 5)
    intact = predict_logits(small_model, pixels).softmax(-1).gather(1, labels[:, None])[:, 0]
    black = predict_logits(small_model, torch.zeros_like(pixels)).softmax(-1).gather(1, labels[:, None])[:, 0]
    assert curve.shape == (6, 5)
    torch.testing.assert_close(curve[:, 0], intact)
    torch.testing.assert_close(curve[:, -1], black)
    curves = deletion_curves(small_model, pixels, labels, steps=4, random_seeds=(0, 1))
    assert list(curves) == ["rollout", "last-layer attention", "random (seed 0)", "random (seed 1)"]
    torch.testing.assert_close(curves["random (seed 0)"], curve.mean(dim=0))


def test_curve_area():
    torch.testing.assert_close(curve_area(torch.linspace(1, 0, 9)), torch.tensor(0.5))
    torch.testing.assert_close(curve_area(torch.ones(2, 5)), torch.ones(2))


def test_rank_correlation_is_spearman():
    from scipy.stats import spearmanr

    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 8, 8, generator=generator), torch.rand(4, 8, 8, generator=generator)
    expected = [spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(4)]
    torch.testing.assert_close(rank_correlation(a, b), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(rank_correlation(a, a * 3 + 1), torch.ones(4, dtype=torch.float64))


def test_randomise_top_blocks(small_model):
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    same = randomise_top_blocks(small_model, 0, seed=7)
    top = randomise_top_blocks(small_model, 1, seed=7)
    fresh = build_vit(SMALL, seed=7)  # timm's init; small_model itself has seed 0
    for key, value in small_model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # the model itself is untouched
        torch.testing.assert_close(same.state_dict()[key], value, rtol=0, atol=0)
        expected = fresh.state_dict()[key] if key.startswith("blocks.1.") else value
        torch.testing.assert_close(top.state_dict()[key], expected, rtol=0, atol=0)


def test_randomisation_steps_and_curves(small_model, digits):
    pixels = digits.test_images[:8]
    maps = randomised_maps(small_model, pixels, seed=5)
    assert set(maps) == {"rollout", "last-layer attention"} and maps["rollout"].shape == (3, 8, 8, 8)
    torch.testing.assert_close(maps["rollout"][0], class_token_maps(small_model, pixels)["rollout"])
    top = class_token_maps(randomise_top_blocks(small_model, 1, seed=5), pixels)
    torch.testing.assert_close(maps["last-layer attention"][1], top["last-layer attention"])
    curves = randomisation_curves(maps)
    for name, curve in curves.items():
        assert curve.shape == (3,)
        torch.testing.assert_close(curve[0], torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(curve[2], rank_correlation(maps[name][0], maps[name][2]).mean())


def test_ink_ratio_per_randomisation_step():
    ink = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # (B, gh, gw)
    stacked = torch.tensor([[[[1.0, 3.0], [1.0, 1.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])  # (2, B, gh, gw)
    torch.testing.assert_close(ink_ratio(stacked, ink), torch.tensor([[3.0], [1.0]]))


def test_run_ablations_trains_every_variant_with_its_seeds(digits, monkeypatch):
    data = subset(digits, 64, 32)
    calls = []
    real_train = training_module.train_vit

    def spy(model, data, config, progress):
        calls.append((spec_of(model), config.seed, float(model.pos_embed.detach().sum())))
        return real_train(model, data, config, progress=progress)
    monkeypatch.setattr(training_module, "train_vit", spy)
    ablations = {"baseline": {}, "mean pooling": {"class_token": False}}
    results = run_ablations(data, SMALL, TrainConfig(epochs=1, batch_size=32), {"baseline": (0, 1),
                                                                                "mean pooling": (0,)}, ablations)
    assert results["baseline"].shape == (2,) and results["mean pooling"].shape == (1,)
    mean_pool = dataclasses.replace(SMALL, class_token=False)
    expected = [(SMALL, 0, build_vit(SMALL, 0)), (SMALL, 1, build_vit(SMALL, 1)), (mean_pool, 0, build_vit(mean_pool, 0))]
    assert [(spec, seed) for spec, seed, _ in calls] == [(spec, seed) for spec, seed, _ in expected]
    for (_, _, start), (_, _, model) in zip(calls, expected):
        assert start == float(model.pos_embed.detach().sum()), "each run starts from build_vit(variant, seed)"
    assert all(0 <= float(a) <= 1 for values in results.values() for a in values)


def test_chance_level_is_what_untrained_weights_give(digits):
    """Sanity of the learned-claim tests' reference: untrained weights are at chance on digits."""
    model = untrained_like(build_vit(), seed=0)
    accuracy = (predict_logits(model, digits.test_images).argmax(-1) == digits.test_labels).float().mean()
    assert accuracy < 0.25 and not math.isnan(float(accuracy))


# ---------------------------------------------------------------- the shipped ablation table

def test_ablation_table_round_trips_and_a_bad_file_is_one_line(tmp_path):
    from vit_inspect import AblationTable, load_ablations, save_ablations
    table = AblationTable({"a": torch.tensor([0.5, 0.75]), "b": torch.tensor([0.25])}, {"a": (0, 1), "b": (3,)},
                          TrainConfig(epochs=2), "digits")
    again = load_ablations(save_ablations(table, tmp_path / "t.json"))
    assert again.seeds == table.seeds and again.config == table.config and again.dataset == "digits"
    assert list(again.accuracies) == ["a", "b"]
    torch.testing.assert_close(again.accuracies["a"], table.accuracies["a"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(VitInspectError, match="bad.json: not an ablation table"):
        load_ablations(tmp_path / "bad.json")


def test_shipped_ablation_table_is_the_short_recipe_on_every_variant():
    from vit_inspect import ABLATION_RECIPE, ABLATION_SEEDS, load_ablations
    table = load_ablations()
    assert table.config == ABLATION_RECIPE and table.dataset == "digits" and table.seeds == ABLATION_SEEDS
    assert all(0.1 < float(a.min()) <= 1.0 for a in table.accuracies.values()), "accuracies, not percentages"


def test_training_uses_one_thread_and_gives_torch_its_setting_back(monkeypatch):
    from vit_inspect import training
    seen = []
    real_epoch = training._train_epoch
    monkeypatch.setattr(training, "_train_epoch", lambda *a, **k: seen.append(torch.get_num_threads()) or real_epoch(*a, **k))
    data = training.load_dataset("digits")
    small = data._replace(train_images=data.train_images[:64], train_labels=data.train_labels[:64],
                                test_images=data.test_images[:32], test_labels=data.test_labels[:32])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_vit(build_vit(ViTSpec(depth=1)), small, TrainConfig(epochs=1), progress=False)
        assert seen == [1] and torch.get_num_threads() == 2, "one thread while training, the caller's after"
        train_vit(build_vit(ViTSpec(depth=1)), small, TrainConfig(epochs=1), progress=False, threads=None)
        assert seen[-1] == 2, "threads=None keeps the caller's setting"
    finally:
        torch.set_num_threads(before)


def digits_texts() -> dict[str, str]:
    """Every text that says who wrote the digits: the module docstring, notebook 09's markdown, data/README.md."""
    from pathlib import Path

    import nbformat

    root = Path(__file__).resolve().parent.parent
    notebook = nbformat.read(root / "notebooks" / "09_training.ipynb", as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    return {"training.py": training_module.__doc__, "09_training.ipynb": markdown,
            "data/README.md": (root / "data" / "README.md").read_text()}


def test_digits_come_from_13_writers_and_every_text_says_so():
    """scikit-learn's digits are UCI's test part (13 writers), and a random split shares the writers."""
    assert digits_writers() == 13
    for name, text in digits_texts().items():
        flat = " ".join(text.split())
        assert "13 writers" in flat and "from 43 writers" not in flat, name
        assert "held-out digits, not held-out writers" in flat, f"{name}: say what the split holds out"


def test_digits_writers_refuses_a_description_without_them(monkeypatch):
    import sklearn.datasets

    class Bunch:
        DESCR = "Optical recognition of handwritten digits dataset"

    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: Bunch())
    with pytest.raises(VitInspectError, match="test writers"):
        digits_writers()
