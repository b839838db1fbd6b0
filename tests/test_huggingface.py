"""Notebook 08 helpers: timm <-> Hugging Face transformers through one key table, equal outputs both ways.

Models are untrained and perturbed (every parameter matters), in float64. transformers'
eager attention takes its softmax in float32, so the two libraries agree to float32
precision (HF_TOLERANCE); a wrong mapping misses by orders of magnitude more.
Tests that need transformers skip, with the install command as the reason, where it is missing.
"""
import copy
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn
from torch.testing import assert_close

import vit_inspect.huggingface as huggingface
from vit_inspect import (HF_KEY_MAP, HF_TOLERANCE, ScratchConfig, VitInspectError, capture, checkpoint_differences,
                         compare_preprocessing, create_untrained, hf_checkpoint_cached, hf_config_of,
                         hf_image_processor, hf_steps, hf_to_timm, key_map, load_hf_checkpoint, perturb_parameters,
                         require_transformers, sample_images, scratch_config_of, timm_steps, timm_to_hf)
from vit_inspect.from_scratch import key_pairs

STAGES = ("patches", "tokens", "blocks", "attention", "normed", "logits")


@pytest.fixture(scope="module")
def transformers():
    try:
        return require_transformers()
    except VitInspectError as err:
        pytest.skip(str(err))


def perturbed(name: str, **kwargs) -> nn.Module:
    return perturb_parameters(create_untrained(name, seed=0, **kwargs), seed=1).double()


def images(batch: int = 1, size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def assert_same(hf_model: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    got, expected = hf_steps(hf_model, x), timm_steps(model, x)
    for stage in STAGES:
        assert_close(got[stage], expected[stage], **HF_TOLERANCE, msg=lambda m: f"{stage}: {m}")


@pytest.fixture(scope="module")
def vit_b16(transformers):
    """ViT-B/16 with its 1000-class head, untrained and perturbed, float64."""
    return perturbed("vit_base_patch16_224")


@pytest.fixture(scope="module")
def small(transformers, tiny):
    return perturb_parameters(copy.deepcopy(tiny), seed=3).double()


def test_timm_to_hf_gives_equal_logits_and_attention_for_vit_b16(vit_b16):
    hf_model = timm_to_hf(vit_b16)
    assert hf_model.config._attn_implementation == "eager" and not hf_model.training
    x = images(batch=1)
    assert_same(hf_model, vit_b16, x)
    attentions = hf_model(pixel_values=x, output_attentions=True).attentions  # L x (B, H, N, N)
    assert torch.stack(attentions, dim=1).shape == (1, 12, 12, 197, 197)
    assert hf_model.config.layer_norm_eps == 1e-6 and hf_model.config.id2label[281] == "tabby, tabby cat"


def test_hf_to_timm_gives_equal_logits_and_attention_for_vit_b16(transformers):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        hf_model = transformers.ViTForImageClassification(hf_config_of(ScratchConfig()))  # ViT-B/16, 1000 classes
    hf_model = perturb_parameters(hf_model.eval(), seed=5).double()
    model = hf_to_timm(hf_model)
    assert type(model).__name__ == "VisionTransformer" and not model.training
    x = images(batch=1)
    assert_same(hf_model, model, x)
    with torch.no_grad():
        assert_close(model(x), hf_model(pixel_values=x).logits, **HF_TOLERANCE)
    assert_close(capture(model, x)["attention"], hf_steps(hf_model, x)["attention"], **HF_TOLERANCE)


def test_the_round_trip_is_exact(small):
    back = hf_to_timm(timm_to_hf(small)).state_dict()
    original = small.state_dict()
    assert back.keys() == original.keys()
    for key in original:
        assert torch.equal(back[key], original[key]), key


def test_timm_to_hf_copies_and_never_shares_storage(small):
    hf_model = timm_to_hf(small)
    with torch.no_grad():
        hf_model.vit.layers[0].attention.q_proj.weight.add_(1.0)
    assert not torch.equal(hf_to_timm(hf_model).blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)


def test_the_table_names_every_tensor_of_both_libraries_once(small):
    config = scratch_config_of(small)
    hf_model = timm_to_hf(small)
    assert sorted(k for keys in (hf for _, hf in key_map(config)) for k in keys) == sorted(hf_model.state_dict())
    assert sorted(t for t, _ in key_map(config)) == sorted(small.state_dict())
    assert sorted(t for t, _ in key_map(config)) == sorted(t for _, t in key_pairs(config))  # same tensors as 07
    assert len(HF_KEY_MAP) == 11


def test_the_hub_column_is_what_save_pretrained_writes_and_from_pretrained_reads(small, tmp_path):
    from safetensors import safe_open

    hf_model = timm_to_hf(small)
    hf_model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    hub_keys = {k for _, keys in key_map(scratch_config_of(small), column="hub") for k in keys}
    assert saved == hub_keys
    assert "vit.encoder.layer.0.attention.attention.query.weight" in saved  # the Hub's file layout
    reloaded = load_hf_checkpoint(str(tmp_path))
    x = images(batch=1)
    with torch.no_grad():
        assert_close(reloaded.double()(pixel_values=x).logits, hf_model(pixel_values=x).logits)


def test_a_layer_norm_eps_of_1e_12_is_kept_and_changes_the_logits_a_little(transformers, small):
    hf_model = timm_to_hf(small)
    assert {m.eps for m in hf_model.modules() if isinstance(m, nn.LayerNorm)} == {1e-6} == {small.norm.eps}
    hf_model.config.layer_norm_eps = 1e-12  # what google's checkpoints say
    for module in hf_model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = 1e-12
    model = hf_to_timm(hf_model)
    assert {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)} == {1e-12}
    x = images(batch=1)
    with torch.no_grad():
        logits = small(x)
        gap = (model(x) - logits).abs().max()
        assert_close(model(x), hf_model(pixel_values=x).logits, **HF_TOLERANCE)
    assert 1e-9 < gap < 1e-3 * logits.abs().max(), "visible in float64, small next to the logits"


# ---- planted bugs in the mapping: query and key swapped, in either direction


def test_mutation_query_and_key_swapped_in_timm_to_hf_is_caught(small, monkeypatch):
    right = huggingface.split_qkv
    monkeypatch.setattr(huggingface, "split_qkv", lambda t: tuple(right(t)[i] for i in (1, 0, 2)))
    hf_model, x = timm_to_hf(small), images(batch=1)
    with pytest.raises(AssertionError):
        assert_same(hf_model, small, x)
    got, expected = hf_steps(hf_model, x), timm_steps(small, x)
    assert_close(got["tokens"], expected["tokens"], **HF_TOLERANCE)
    assert (got["attention"][:, 0] - expected["attention"][:, 0]).abs().max() > 1e-3, "A = softmax(k q^T) is A^T-like"


def test_mutation_query_and_key_swapped_in_hf_to_timm_is_caught(small, monkeypatch):
    hf_model = timm_to_hf(small)
    right = huggingface.merge_qkv
    monkeypatch.setattr(huggingface, "merge_qkv", lambda q, k, v: right(k, q, v))
    with pytest.raises(AssertionError):
        assert_same(hf_model, hf_to_timm(hf_model), images(batch=1))


# ---- refusals and the optional dependency


def test_timm_to_hf_refuses_what_a_plain_vit_cannot_hold(transformers):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, reg_tokens=4)
    with pytest.raises(VitInspectError, match=r"4 register tokens \(key reg_token\)"):
        timm_to_hf(model)


def test_hf_to_timm_refuses_other_models_and_activations(transformers):
    config = hf_config_of(ScratchConfig(dim=64, depth=1, num_heads=2, mlp_dim=128, num_classes=10))
    with pytest.raises(VitInspectError, match="ViTForImageClassification"):
        hf_to_timm(transformers.ViTModel(config))
    with_extra = transformers.ViTForImageClassification(config)
    with_extra.vit.layers[0].attention.gate = nn.Linear(64, 64)  # a tensor the table has no row for
    with pytest.raises(VitInspectError, match=r"keys with no place in timm \['vit.layers.0.attention.gate.bias'"):
        hf_to_timm(with_extra)
    config.hidden_act = "gelu_new"
    with pytest.raises(VitInspectError, match="hidden_act='gelu_new'"):
        hf_to_timm(transformers.ViTForImageClassification(config))


def test_hf_steps_needs_eager_attention(small):
    hf_model = timm_to_hf(small, attn_implementation="sdpa")
    with pytest.raises(VitInspectError, match="attn_implementation='eager'"):
        hf_steps(hf_model, images(batch=1))


def test_require_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(VitInspectError, match=r"not installed: pip install 'transformers>=5'.*\.\[hf\]"):
        require_transformers()


def test_require_transformers_refuses_version_4(transformers, monkeypatch):
    # the module now in sys.modules: building a model can make transformers put a fresh one there
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.57.1")
    with pytest.raises(VitInspectError, match="4.57.1 is too old"):
        require_transformers()


def test_the_package_imports_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert huggingface.HF_KEY_MAP[4].timm == "blocks.{i}.attn.qkv"  # the table needs no transformers


# ---- checkpoints and the cache


def test_checkpoint_differences_are_zero_for_a_conversion_and_name_a_changed_tensor(small):
    hf_model = timm_to_hf(small)
    assert all(gap == 0 for gap in checkpoint_differences(hf_model, small).values())
    with torch.no_grad():
        hf_model.vit.layers[3].attention.k_proj.bias[5] += 0.25
    gaps = checkpoint_differences(hf_model, small)
    assert [key for key, gap in gaps.items() if gap > 0] == ["blocks.3.attn.qkv.bias"]
    assert_close(gaps["blocks.3.attn.qkv.bias"], torch.tensor(0.25, dtype=torch.float64))


def test_a_cached_checkpoint_is_found_and_loaded_offline(small, isolated_hub_cache):
    assert not hf_checkpoint_cached("google/vit-base-patch16-224")
    snapshot = isolated_hub_cache / "models--someone--tiny-vit" / "snapshots" / "abc123"
    timm_to_hf(small).float().save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    assert hf_checkpoint_cached("someone/tiny-vit")
    loaded = load_hf_checkpoint("someone/tiny-vit")
    assert all(gap < 1e-6 for gap in checkpoint_differences(loaded, small).values())


# ---- preprocessing: resize + centre crop (timm) vs resize straight to 224 x 224 (the HF processor)


def test_the_image_processor_has_the_published_values(transformers):
    processor = hf_image_processor()
    assert (processor.size.height, processor.size.width) == (224, 224)
    assert processor.resample == 2  # PIL's BILINEAR
    assert processor.do_rescale and processor.rescale_factor == 1 / 255
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3


def _bands(width: int = 600, height: int = 200) -> Image.Image:
    """Three vertical bands: red | green | blue, each a third of the width."""
    pixels = torch.zeros(height, width, 3, dtype=torch.uint8)
    for band in range(3):
        pixels[:, band * width // 3:(band + 1) * width // 3, band] = 255
    return Image.fromarray(pixels.numpy(), mode="RGB")


def test_the_hf_processor_squashes_where_timm_crops(transformers, tiny):
    inputs = compare_preprocessing(_bands(), tiny, hf_image_processor())
    assert inputs["timm"].shape == inputs["hf"].shape == (1, 3, 224, 224)
    assert_close(inputs["difference"], inputs["hf"] - inputs["timm"])
    left = {name: inputs[name][0, :, 112, 2] for name in ("timm", "hf")}  # a pixel at the left edge
    assert_close(left["hf"], torch.tensor([1.0, -1.0, -1.0]), atol=0.02, rtol=0)  # red: the whole width is kept
    assert left["timm"][1] > 0.9 and left["timm"][0] < -0.9, "the centre crop cut the red band away"


def test_the_hf_processor_on_a_224_square_only_normalises(transformers):
    image = Image.fromarray(torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8).numpy(), mode="RGB")
    pixels = hf_image_processor()(images=image, return_tensors="pt")["pixel_values"]  # (1, 3, 224, 224)
    expected = (torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255 - 0.5) / 0.5  # (3, 224, 224)
    assert_close(pixels[0], expected.float())


def test_compare_preprocessing_on_a_bundled_photo(transformers, tiny):
    photo = next(p for p in sample_images() if p.name == "chelsea.png")
    inputs = compare_preprocessing(photo, tiny, hf_image_processor())
    assert inputs["difference"].abs().max() > 0.1, "a 451 x 300 photo: crop and squash see different pixels"
