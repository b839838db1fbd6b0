"""Image files of every kind a student might hand in, made on the fly."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

RED = (220, 30, 30)


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.full((height, width), 90, np.uint8),
                    np.tile(x[::-1], (height, 1))], axis=-1)
    return Image.fromarray(rgb, "RGB")


def reference_grey() -> np.ndarray:
    """8-bit greyscale of the picture behind the grey, 16-bit and float files."""
    return np.asarray(_gradient().convert("L"), dtype=int)


def write_valid_images(folder: Path) -> dict[str, Path]:
    """One file per valid kind; each decodes to an RGB image (see test_images)."""
    base = _gradient()
    made = {
        "rgba": (base.convert("RGBA"), "png"),
        "la": (base.convert("LA"), "png"),
        "palette_transparent": (_palette_with_transparency(base), "png"),
        "greyscale": (base.convert("L"), "png"),
        "grey16": (Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)), "png"),
        "cmyk": (base.convert("CMYK"), "jpg"),
        "bilevel": (base.convert("1"), "png"),
        "float": (Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0, "F"), "tif"),
    }
    paths = {}
    for kind, (image, ext) in made.items():
        paths[kind] = folder / f"{kind}.{ext}"
        image.save(paths[kind])
    paths["exif_rotated"] = write_exif_rotated(folder / "exif_rotated.jpg")
    paths["animated"] = write_animated(folder / "animated.gif")
    return paths


def _palette_with_transparency(base: Image.Image) -> Image.Image:
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return palette


def write_exif_rotated(path: Path) -> Path:
    """Stored 60 wide x 40 high with a red left column; EXIF says 'rotate 90 CW to view'."""
    stored = Image.new("RGB", (60, 40), (255, 255, 255))
    stored.paste(RED, (0, 0, 10, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes(), quality=95)
    return path


def write_animated(path: Path) -> Path:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, (30, 30, 220))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_invalid_images(folder: Path) -> dict[str, Path]:
    """One file per invalid kind; each must give one ImageError naming the file."""
    png = io.BytesIO()
    _gradient(256, 256).save(png, "PNG")
    jpg = io.BytesIO()
    _gradient(256, 256).save(jpg, "JPEG")
    paths = {
        "not_an_image": folder / "notes.png",
        "empty": folder / "empty.jpg",
        "truncated_png": folder / "truncated.png",
        "truncated_jpg": folder / "truncated.jpg",
        "missing": folder / "missing.png",
        "directory": folder / "a_folder.png",
        "bomb": folder / "bomb.png",
    }
    paths["not_an_image"].write_text("these are lecture notes, not a picture\n")
    paths["empty"].write_bytes(b"")
    paths["truncated_png"].write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    paths["truncated_jpg"].write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    paths["directory"].mkdir()
    Image.new("1", (20000, 20000)).save(paths["bomb"])  # 400 Mpx, a few KB on disk
    return paths
