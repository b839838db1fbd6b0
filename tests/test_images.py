"""load_image: every valid kind becomes RGB, every invalid kind one clear error; preprocess = timm's crop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torchvision import transforms as T

from vit_inspect import ImageError, load_image, preprocess, sample_images, tensor_to_image
from vit_inspect import images as images_module
from vit_inspect.images import to_rgb

from .image_kinds import RED, reference_grey
from .mutation import fails, passes


@pytest.mark.parametrize("kind", ["rgba", "la", "palette_transparent", "greyscale", "grey16",
                                  "cmyk", "bilevel", "float", "exif_rotated", "animated"])
def test_valid_kinds_become_rgb(valid, kind):
    image = load_image(valid[kind])
    assert image.mode == "RGB" and np.asarray(image).shape[-1] == 3


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(clear)).min() == 255


@pytest.mark.parametrize("kind", ["greyscale", "grey16", "float"])
def test_high_bit_depth_keeps_its_values(valid, kind):
    """A naive PIL convert clips 16-bit values to white and float values to black."""
    grey = np.asarray(load_image(valid[kind]), dtype=int)[..., 0]
    assert np.abs(grey - reference_grey()).max() <= 1


def test_exif_rotated_jpeg_is_shown_upright(valid):
    image = np.asarray(load_image(valid["exif_rotated"]))
    assert image.shape[:2] == (60, 40)  # was stored 60 wide, 40 high
    top_row = image[:5, 5:35].reshape(-1, 3).mean(axis=0)
    assert top_row[0] > 180 and top_row[1] < 90  # the red stripe rotated to the top


def test_animated_image_uses_frame_zero(valid):
    pixel = np.asarray(load_image(valid["animated"]))[16, 16]
    assert pixel[0] > 180 and pixel[2] < 90


@pytest.mark.parametrize("kind", ["not_an_image", "empty", "truncated_png", "truncated_jpg",
                                  "missing", "directory", "bomb"])
def test_invalid_kinds_give_one_line_naming_the_file(invalid, kind):
    with pytest.raises(ImageError) as error:
        load_image(invalid[kind])
    message = str(error.value)
    assert str(invalid[kind]) in message and "\n" not in message


def test_preprocess_equals_timm_transform_and_returns_the_crop(tiny):
    path = sample_images()[0]
    pre = preprocess(path, tiny)
    config = resolve_model_data_config(tiny)
    expected = create_transform(**config)(Image.open(path).convert("RGB")).unsqueeze(0)
    torch.testing.assert_close(pre.tensor, expected, rtol=0, atol=0)
    assert pre.tensor.shape == (1, 3, 224, 224) and pre.crop.size == (224, 224)
    assert pre.data_config == config


def test_denormalise_inverts_normalise(tiny):
    pre = preprocess(sample_images()[1], tiny)
    restored = np.asarray(tensor_to_image(pre.tensor, pre.data_config), dtype=int)
    assert np.abs(restored - np.asarray(pre.crop, dtype=int)).max() <= 1


def test_pil_input_is_converted(valid):
    assert to_rgb(Image.open(valid["cmyk"])).mode == "RGB"
    assert load_image(Image.new("L", (3, 3))).mode == "RGB"


def test_bundled_photos_are_real_rgb_images():
    photos = sample_images()
    assert 3 <= len(photos) <= 5
    for photo in photos:
        assert min(load_image(photo).size) >= 224


def test_red_reference_colour_is_red():
    assert RED[0] > 200 and RED[1] < 50


# ---------------------------------------------------------------- the crop, by hand from the data config

def resize_then_centre_crop(image: Image.Image, config: dict) -> tuple[Image.Image, tuple[int, int], tuple]:
    """timm's eval geometry worked out from the data config alone: (crop, resized (w, h), crop box)."""
    _, height, width = config["input_size"]
    assert config["crop_mode"] == "center" and height == width
    short = math.floor(height / config["crop_pct"])  # 248 for 224 and crop_pct 0.9
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    left, top = int(round((size[0] - width) / 2)), int(round((size[1] - height) / 2))
    box = (left, top, left + width, top + height)
    return image.resize(size, Image.BICUBIC).crop(box), size, box


def check_crop(model, path):
    crop = images_module.preprocess(path, model).crop
    expected, _, _ = resize_then_centre_crop(load_image(path), resolve_model_data_config(model))
    assert np.array_equal(np.asarray(crop), np.asarray(expected)), f"{path.name}: not timm's resize + centre crop"


def test_the_crop_is_timms_resize_then_centre_crop(tiny):
    config = resolve_model_data_config(tiny)
    _, size, box = resize_then_centre_crop(load_image(sample_images()[1]), config)
    assert sample_images()[1].name == "chelsea.png" and (size, box) == ((372, 248), (74, 12, 298, 236))
    for path in sample_images():
        check_crop(tiny, path)


def squashed_to_224(transform):
    """The course's preprocessing: resize straight to 224 x 224, whatever the aspect ratio."""
    _, to_tensor = REAL_SPLIT(transform)
    return T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC)]), to_tensor


def top_left_crop(transform):
    geometric, to_tensor = REAL_SPLIT(transform)
    return T.Compose([geometric.transforms[0], lambda image: image.crop((0, 0, 224, 224))]), to_tensor


REAL_SPLIT = images_module.split_transform


@pytest.mark.parametrize("bug", [squashed_to_224, top_left_crop])
def test_mutation_wrong_crop_is_caught(tiny, monkeypatch, bug):
    path = sample_images()[1]
    passes(check_crop, tiny, path)
    monkeypatch.setattr(images_module, "split_transform", bug)
    fails(check_crop, tiny, path)
