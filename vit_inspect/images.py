"""Images in, RGB out; preprocessing from the model's own data config."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import create_transform, resolve_model_data_config
from timm.data.constants import DEFAULT_CROP_PCT
from torch import nn
from torchvision import transforms as T

from .errors import ImageError

HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
CROP_DROP_WARNING = 0.5     # warn when the crop leaves out more than this share of the width or height
UPSCALE_WARNING = 2.0       # warn when each image pixel is stretched over more than this many input pixels


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """An 8-bit RGB image from a path or PIL image, upright (EXIF) and frame 0 if animated."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    path = Path(source)
    _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: image is too large (over {Image.MAX_IMAGE_PIXELS} pixels), "
                         "refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file that Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{path}: truncated or corrupt image ({err})") from None


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_MODES:
        image = _high_bit_to_l(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit/32-bit/float greyscale to 8-bit, keeping the full range (PIL would clip)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = (0.0, 1.0) if values.min() >= 0 and values.max() <= 1 else (values.min(), values.max())
    else:
        low, high = 0.0, (65535.0 if values.max() > 255 else 255.0)
    scaled = (values - low) / max(high - low, 1e-12)
    return Image.fromarray(np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8), mode="L")


class Preprocessed(NamedTuple):
    tensor: torch.Tensor      # (1, 3, H, W), normalised as the model expects
    crop: Image.Image         # the H x W image the model sees (after resize + centre crop)
    data_config: dict


def data_config_of(model: nn.Module) -> dict:
    """The model's own eval data config (input size, interpolation, crop, mean/std)."""
    return resolve_model_data_config(model)


def preprocess(image: str | os.PathLike | Image.Image, model: nn.Module) -> Preprocessed:
    """Apply the model's eval transform; also return the exact crop the model sees."""
    config = data_config_of(model)
    geometric, to_tensor = split_transform(create_transform(**config, is_training=False))
    crop = geometric(load_image(image))
    return Preprocessed(to_tensor(crop).unsqueeze(0), crop, config)


def split_transform(transform: T.Compose) -> tuple[T.Compose, T.Compose]:
    """Split timm's eval transform into (PIL resize/crop, to-tensor + normalise)."""
    steps = list(transform.transforms)
    first_tensor_step = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
    return T.Compose(steps[:first_tensor_step]), T.Compose(steps[first_tensor_step:])


def resized_size(image_size: tuple[int, int], data_config: dict) -> tuple[int, int]:
    """(width, height) of an image of ``image_size`` (W, H) after the eval transform's resize, before its crop.

    Follows timm's ``transforms_imagenet_eval``: the resize target is input / crop_pct; "center"
    fits the shorter side, "border" the longer one, "squash" both (aspect ratio lost).
    """
    W, H = image_size
    _, ch, cw = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
    sh, sw = math.floor(ch / crop_pct), math.floor(cw / crop_pct)
    mode = data_config.get("crop_mode") or "center"
    if mode == "squash":
        return sw, sh
    if mode == "center" and sh == sw:  # torchvision's Resize(int): shorter side to sh, longer truncated
        new_long = int(sh * max(W, H) / min(W, H))
        return (sh, new_long) if W <= H else (new_long, sh)
    ratio = (max if mode == "border" else min)(H / sh, W / sw)  # timm's ResizeKeepRatio
    return round(W / ratio), round(H / ratio)


def _crop_start(resized: int, crop: int) -> int:
    """First pixel of a centred crop (torchvision / timm rounding); negative where the crop pads."""
    return -((crop - resized) // 2) if crop > resized else round((resized - crop) / 2)


def crop_box(image_size: tuple[int, int], data_config: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the region the model sees, in pixels of the original image.

    ``image_size`` is (W, H) of the upright image (after EXIF rotation, as :func:`load_image`
    returns it). Equal to timm's eval transform: ``image.resize(input, box=crop_box(...))``
    gives the crop :func:`preprocess` returns. Outside 0..W or 0..H where the transform pads.
    """
    W, H = image_size
    _, ch, cw = data_config["input_size"]
    rw, rh = resized_size(image_size, data_config)
    left, top = _crop_start(rw, cw), _crop_start(rh, ch)
    sx, sy = W / rw, H / rh  # original pixels per resized pixel
    return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy


def crop_warnings(image_size: tuple[int, int], data_config: dict) -> list[str]:
    """Plain-language warnings when the model sees little of the image, or a blown-up one."""
    W, H = image_size
    _, ch, cw = data_config["input_size"]
    left, top, right, bottom = crop_box(image_size, data_config)
    warnings_found = []
    for side, start, end, size in (("width", left, right, W), ("height", top, bottom, H)):
        kept = (min(end, size) - max(start, 0)) / size
        if 1 - kept > CROP_DROP_WARNING:
            warnings_found.append(
                f"the centre crop drops {1 - kept:.0%} of the image's {side} (the model sees pixels "
                f"{max(start, 0):.0f}-{min(end, size):.0f} of {size}): what lies outside is never seen")
    scale = cw / (right - left)  # input pixels per original pixel
    if scale > UPSCALE_WARNING:
        warnings_found.append(
            f"the image ({W}x{H} px) is much smaller than the {cw}x{ch} input: it is upscaled {scale:.1f}x, "
            "so the patches see interpolated pixels, not detail")
    return warnings_found


def denormalize(tensor: torch.Tensor, data_config: dict) -> torch.Tensor:
    """Undo Normalize: (3, H, W) or (B, 3, H, W) -> same shape in [0, 1]."""
    mean = torch.tensor(data_config["mean"], dtype=tensor.dtype).view(3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=tensor.dtype).view(3, 1, 1)
    return (tensor * std + mean).clamp(0, 1)


def tensor_to_image(tensor: torch.Tensor, data_config: dict) -> Image.Image:
    """A normalised (3, H, W) or (1, 3, H, W) tensor back to an RGB PIL image."""
    pixels = denormalize(tensor.detach().reshape(3, *tensor.shape[-2:]), data_config)
    array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(array, mode="RGB")


def data_dir() -> Path:
    """``data/`` of a checkout, or the copy a wheel installs as ``vit_inspect/sample_data``."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "data", package / "sample_data"):
        if (candidate / "SHA256SUMS").is_file():
            return candidate
    raise ImageError("the bundled sample images are missing; reinstall vit-inspect")


def sample_images() -> list[Path]:
    """The photos bundled in ``data/`` (see data/README.md for sources and licences)."""
    return sorted(p for p in data_dir().iterdir() if p.suffix in (".png", ".jpg"))


def image_batches(paths: Sequence[str | os.PathLike], model: nn.Module, batch_size: int,
                  on_error: Callable[[Path, ImageError], None] | None = None) -> Iterator[torch.Tensor]:
    """Preprocessed (B, 3, H, W) batches of ``paths``, loaded lazily, in order.

    ``on_error(path, error)``: called for a file that cannot be read, which is then left
    out (the batches stay full); without it the first such file raises its ImageError.
    """
    batch: list[torch.Tensor] = []
    for path in paths:
        try:
            batch.append(preprocess(path, model).tensor)  # (1, 3, H, W)
        except ImageError as error:
            if on_error is None:
                raise
            on_error(Path(path), error)
            continue
        if len(batch) == batch_size:
            yield torch.cat(batch)  # (B, 3, H, W)
            batch = []
    if batch:
        yield torch.cat(batch)  # (B, 3, H, W)
