"""The small ViT trained here: a stock timm ViT built from its spec, and a weights file that rebuilds it."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from PIL import Image

from vit_inspect import (VitInspectError, ViTSpec, TrainConfig, TrainingData, build_vit, capture, grid_size_of,
                         load_dataset, load_trained, load_vit, model_input, num_prefix_tokens_of, preprocess,
                         save_trained, shipped_weights, spec_of, training_metadata, untrained_like)
from vit_inspect.weights import WEIGHTS_ENV

SMALL = ViTSpec(embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.0)  # fast stand-in with the same layout
QUICK = TrainConfig(epochs=2, batch_size=32)


@pytest.fixture(scope="module")
def digits() -> TrainingData:
    return load_dataset("digits")


# ---------------------------------------------------------------- the model


def test_build_vit_is_a_timm_vit_with_its_own_data_config():
    model = build_vit()
    x = preprocess(Image.new("RGB", (8, 8), "white"), model).tensor  # (1, 3, 32, 32)
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x, torch.ones_like(x))  # white -> 1 with mean = std = 0.5
    assert grid_size_of(model) == (8, 8) and num_prefix_tokens_of(model) == 1
    assert model(x).shape == (1, 10) and not model.training
    assert spec_of(model) == ViTSpec()
    assert capture(model, x)["attention"].shape == (1, 4, 4, 65, 65)


def test_build_vit_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first, second, other = build_vit(seed=1), build_vit(seed=1), build_vit(seed=2)
    torch.testing.assert_close(torch.rand(3), expected)
    torch.testing.assert_close(first.blocks[0].attn.qkv.weight, second.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    assert not torch.equal(first.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)


def test_ablation_switches():
    from timm.layers import build_sincos2d_pos_embed

    mean_pool = build_vit(dataclasses.replace(ViTSpec(), class_token=False))
    assert num_prefix_tokens_of(mean_pool) == 0 and mean_pool.global_pool == "avg"
    assert build_vit(dataclasses.replace(ViTSpec(), pos_embed="none")).pos_embed is None
    sincos = build_vit(dataclasses.replace(ViTSpec(), pos_embed="sincos"))
    assert not sincos.pos_embed.requires_grad
    torch.testing.assert_close(sincos.pos_embed[0, 1:], build_sincos2d_pos_embed([8, 8], dim=64))
    torch.testing.assert_close(sincos.pos_embed[0, 0], torch.zeros(64))
    assert grid_size_of(build_vit(dataclasses.replace(ViTSpec(), patch_size=8))) == (4, 4)
    with pytest.raises(VitInspectError, match="pos_embed"):
        build_vit(dataclasses.replace(ViTSpec(), pos_embed="rope"))


def test_untrained_like_has_the_same_architecture_and_other_weights():
    model = build_vit(SMALL, seed=3)
    fresh = untrained_like(model, seed=4)
    assert spec_of(fresh) == SMALL
    assert model.state_dict().keys() == fresh.state_dict().keys()
    assert not torch.equal(model.pos_embed, fresh.pos_embed)
    for name in ("norm.weight", "norm.bias", "blocks.0.attn.qkv.bias", "cls_token"):  # no constant left
        assert fresh.state_dict()[name].std() > 0.01, f"{name} is still timm's constant initialisation"
    with pytest.raises(VitInspectError, match="build_vit"):
        spec_of(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- weight files


@pytest.mark.parametrize("changes", [{}, {"class_token": False}, {"pos_embed": "sincos"}, {"patch_size": 8}])
def test_saved_file_rebuilds_its_architecture(digits, tmp_path, changes):
    spec = dataclasses.replace(SMALL, **changes)
    model = build_vit(spec, seed=2)
    path = save_trained(model, tmp_path / "w.safetensors", digits, QUICK, test_accuracy=0.5)
    loaded, provenance = load_vit(weights=path)  # the name is not needed: the header has the architecture
    assert spec_of(loaded) == spec
    x = model_input(model, digits.test_images[:3])  # (3, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert provenance.trained and provenance.trained_on == "digits" and provenance.source == "local file"
    assert "trained here on digits" in provenance.label and "UNTRAINED" not in provenance.label


def test_header_says_what_the_weights_are(digits, tmp_path):
    path = save_trained(build_vit(SMALL), tmp_path / "w.safetensors", digits, QUICK, test_accuracy=0.8125)
    info = training_metadata(path)
    assert info["dataset"] == "digits" and info["split_seed"] == 0 and info["epochs"] == 2
    assert info["test_accuracy"] == 0.8125 and info["num_train"] == 1437 and info["num_test"] == 360
    assert info["architecture"] == dataclasses.asdict(SMALL) and info["class_names"] == list("0123456789")
    assert info["train_config"] == dataclasses.asdict(QUICK)


def test_other_weight_files_are_not_taken_for_trained_here(tmp_path, tiny):
    from vit_inspect import save_weights

    plain = save_weights(tiny, tmp_path / "plain.safetensors", untrained=True)
    assert training_metadata(plain) is None and training_metadata(tmp_path / "missing.safetensors") is None
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    assert training_metadata(tmp_path / "junk.safetensors") is None
    with pytest.raises(VitInspectError, match="vit-inspect train"):
        load_trained(plain)


def test_environment_variable_may_name_a_trained_here_file(digits, tmp_path, monkeypatch):
    path = save_trained(build_vit(SMALL), tmp_path / "w.safetensors", digits, QUICK, test_accuracy=0.5)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    model, provenance = load_vit()
    assert spec_of(model) == SMALL and provenance.trained_on == "digits"


def test_shipped_digits_weights(digits):
    path = shipped_weights("digits")
    assert path.stat().st_size < 5 * 2 ** 20
    model, provenance = load_vit(weights="digits")
    assert provenance.source == "shipped" and provenance.trained and provenance.path == str(path)
    assert provenance.label.endswith("trained here on digits (shipped)")
    info = training_metadata(path)
    assert info["dataset"] == "digits" and info["split_seed"] == 0 and spec_of(model) == ViTSpec(**info["architecture"])
    assert info["train_config"] == dataclasses.asdict(TrainConfig()), "the shipped file follows the current recipe"
    assert spec_of(model) == ViTSpec(), "the shipped file has the default architecture"
    listed = (path.parent / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}" in listed
    with pytest.raises(VitInspectError, match="no shipped weights"):
        shipped_weights("imagenet")
