"""The small ViT trained here: its spec, how it is built, and its weights file.

The model is a stock timm ``VisionTransformer`` described by a :class:`ViTSpec` (32x32
input, 4-pixel patches on an 8x8 grid, D = 64, 4 heads by default); its
``pretrained_cfg`` carries the data config (input size, mean/std, resize + crop) and the
spec itself, so every helper of the suite works on it unchanged.

A file from :func:`write_trained` (``save_trained`` in :mod:`vit_inspect.training`)
names its architecture, data and test accuracy in its safetensors header, so
:func:`load_trained` (and ``load_vit(weights=path)``) rebuilds it; the digits model
trained by ``make train`` ships in ``data/`` (``load_vit(weights="digits")``).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .dataset_names import DIGITS
from .errors import VitInspectError, WeightsError
from .images import data_dir
from .model_info import grid_size_of, num_prefix_tokens_of
from .provenance import (UNTRAINED_METADATA_KEY, LoadedViT, Provenance, load_weights_file, ordinary_permissions,
                         randomise_constant_init)

SHIPPED_WEIGHTS = {DIGITS: "vit_digits.safetensors"}  # short name -> file in data/
TRAINED_HERE_KEY = "vit_inspect_trained_here"  # safetensors header marker of write_trained
SPEC_KEY = "vit_inspect_spec"  # the ViTSpec, kept in the model's pretrained_cfg
# every model here sees pixels in [-1, 1]; 8x8 digits are enlarged with bilinear resampling
DATA_CONFIG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
               "crop_pct": 1.0, "crop_mode": "center"}


@dataclass(frozen=True)
class ViTSpec:
    """The architecture, as timm's VisionTransformer arguments plus two ablation switches.

    ``class_token=False`` pools by the mean of the patch tokens; ``pos_embed`` is
    "learn" (learned, timm's default), "sincos" (fixed 2-D sine-cosine) or "none".
    """

    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 10
    class_token: bool = True
    pos_embed: str = "learn"

    @property
    def name(self) -> str:
        pooling = "" if self.class_token else "_meanpool"
        position = "" if self.pos_embed == "learn" else f"_pos{self.pos_embed}"
        return (f"vit_d{self.embed_dim}_depth{self.depth}_heads{self.num_heads}_patch{self.patch_size}"
                f"_{self.img_size}{pooling}{position}")


def build_vit(spec: ViTSpec = ViTSpec(), seed: int = 0) -> nn.Module:
    """A timm VisionTransformer for ``spec`` with seeded random weights, in eval mode.

    Its ``pretrained_cfg`` holds the data config that ``preprocess`` reads; the
    caller's random state is left untouched.
    """
    from timm.models.vision_transformer import VisionTransformer

    if spec.pos_embed not in ("learn", "sincos", "none"):
        raise VitInspectError(f"pos_embed must be 'learn', 'sincos' or 'none', got {spec.pos_embed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, num_classes=spec.num_classes,
            class_token=spec.class_token, global_pool="token" if spec.class_token else "avg",
            pos_embed="none" if spec.pos_embed == "none" else "learn")
    if spec.pos_embed == "sincos":
        _fix_sincos(model)
    model.pretrained_cfg = {**DATA_CONFIG, "input_size": (3, spec.img_size, spec.img_size),
                            "num_classes": spec.num_classes, "architecture": spec.name, SPEC_KEY: asdict(spec)}
    model.default_cfg = model.pretrained_cfg
    return model.eval()


def _fix_sincos(model: nn.Module) -> None:
    """Fixed 2-D sine-cosine position embedding for the patches, zero for the prefix tokens."""
    from timm.layers import build_sincos2d_pos_embed

    gh, gw = grid_size_of(model)
    prefix = num_prefix_tokens_of(model)
    table = build_sincos2d_pos_embed([gh, gw], dim=model.embed_dim)  # (gh*gw, D)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, prefix:] = table
    model.pos_embed.requires_grad_(False)


def spec_of(model: nn.Module) -> ViTSpec:
    """The ViTSpec a model from :func:`build_vit` (or a file of ``save_trained``) was built from."""
    spec = (getattr(model, "pretrained_cfg", None) or {}).get(SPEC_KEY)
    if spec is None:
        raise VitInspectError(f"{type(model).__name__} was not built by vit_inspect.build_vit")
    return ViTSpec(**spec)


def untrained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture as ``model`` with seeded random (untrained) weights, eval mode.

    Like ``create_untrained``: timm's constant initialisations (norms, biases, class token,
    position embedding) are redrawn too, so no claim passes because a parameter is constant.
    """
    spec = spec_of(model)
    untrained = build_vit(spec, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        randomise_constant_init(untrained)
    if spec.pos_embed == "sincos":  # fixed, not learned: the same table trained or not
        _fix_sincos(untrained)
    return untrained


# ---------------------------------------------------------------- its weights file


def write_trained(model: nn.Module, path: str | os.PathLike, *, dataset: str, split: str, split_seed: int | None,
                  class_names: Sequence[str], num_train: int, num_test: int, train_config: dict,
                  test_accuracy: float) -> Path:
    """Save a :func:`build_vit` model as safetensors (timm's key layout) with what it is in the header.

    Header: the architecture, the dataset and its split, the recipe (``train_config``, whose
    "epochs" is also kept on its own), the test accuracy and the class names: what
    :func:`training_metadata` reads back and :func:`load_trained` rebuilds the model from.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {UNTRAINED_METADATA_KEY: "false", TRAINED_HERE_KEY: "1", "dataset": dataset,
                "split": split, "split_seed": json.dumps(split_seed), "epochs": str(train_config["epochs"]),
                "test_accuracy": f"{test_accuracy:.6f}", "num_train": str(num_train),
                "num_test": str(num_test), "architecture": json.dumps(asdict(spec_of(model))),
                "class_names": json.dumps(list(class_names)), "train_config": json.dumps(train_config)}
    save_file(state, str(path), metadata=metadata)
    return ordinary_permissions(Path(path))  # safetensors writes 0600: a lecturer shares this file


def training_metadata(path: str | os.PathLike) -> dict | None:
    """The header of a file from ``save_trained`` (:func:`write_trained`), decoded; None for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            header = handle.metadata() or {}
    except Exception:  # not readable as safetensors: the ordinary loader says why
        return None
    if header.get(TRAINED_HERE_KEY) != "1":
        return None
    decoded = {key: json.loads(header[key]) for key in ("architecture", "class_names", "train_config", "split_seed")}
    numbers = {"epochs": int(header["epochs"]), "test_accuracy": float(header["test_accuracy"]),
               "num_train": int(header["num_train"]), "num_test": int(header["num_test"])}
    return {"dataset": header["dataset"], "split": header["split"], **numbers, **decoded}


def shipped_weights(name: str = DIGITS) -> Path:
    """Path of the weights trained here that ship in ``data/`` (``SHIPPED_WEIGHTS``)."""
    if name not in SHIPPED_WEIGHTS:
        raise WeightsError(f"no shipped weights named {name!r}; there are: {', '.join(SHIPPED_WEIGHTS)}")
    path = data_dir() / SHIPPED_WEIGHTS[name]
    if not path.is_file():
        raise WeightsError(f"the shipped weights {path} are missing; reinstall vit-inspect or run `make train`")
    return path


def trained_here_path(weights: object) -> Path | None:
    """The file behind ``weights`` if it is a shipped name or a file from ``save_trained``, else None."""
    if isinstance(weights, str) and weights in SHIPPED_WEIGHTS:
        return shipped_weights(weights)
    if isinstance(weights, (str, os.PathLike)) and training_metadata(weights) is not None:
        return Path(weights)
    return None


def load_trained(path: str | os.PathLike, source: str = "local file") -> LoadedViT:
    """A file from ``save_trained`` (:func:`write_trained`) -> LoadedViT: the architecture from its header, its weights loaded."""
    path = Path(path)
    info = training_metadata(path)
    if info is None:
        raise WeightsError(f"weights file {path} was not saved by `vit-inspect train` (no architecture in its header)")
    model = build_vit(ViTSpec(**info["architecture"]))
    trained = load_weights_file(model, path)
    provenance = Provenance(model.pretrained_cfg["architecture"], source, trained, str(path), None,
                            trained_on=info["dataset"])
    return LoadedViT(model.eval(), provenance)
