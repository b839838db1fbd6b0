"""Notebook 09_training: a small ViT trained from scratch, here, and what it learned, checked.

The model is :mod:`vit_inspect.small_vit`'s: a stock timm ``VisionTransformer`` (32x32
input, 4-pixel patches on an 8x8 grid, D = 64, 4 heads), so every helper of the suite
(``capture``, rollout, mean attention distance, ``pos_embed_similarity``, ``preprocess``)
works on it unchanged. Its spec, builder and weights file live there and stay importable
from here.

Data: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans by 13 writers, the
test part of UCI's optdigits; no network needed) upscaled to 32x32, with a seeded
stratified train/test split of the digits - the writers are not recorded, so the same
writers are on both sides: held-out digits, not held-out writers; a folder of class
sub-folders; or, where there is network, torchvision's MNIST, Fashion-MNIST, CIFAR-10.
Every dataset is held as uint8 crops (n, 3, S, S): exactly what ``preprocess`` gives
for the same picture, before normalisation.

A file from :func:`save_trained` names its architecture, data and test accuracy in its
safetensors header, so ``load_vit(weights=path)`` rebuilds it; the digits model trained
by ``make train`` ships in ``data/`` (``load_vit(weights="digits")``).

Also the learned-claim analyses: ink vs background under rollout, deletion curves
(faithfulness) and the model-randomisation sanity check (Adebayo et al. 2018).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attention_maps import attention_rollout, bright_ratio, mean_attention_distance, rollout_to_grid
from .dataset_names import DATASETS, DIGITS, TORCHVISION_DATASETS
from .errors import VitInspectError, named_argument
from .images import data_config_of, data_dir, load_image, split_transform
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of, tokens_to_grid
from .position_embeddings import neighbour_similarity_stats, pos_embed_similarity
from .recorder import capture
# The small ViT's spec, builder and weights file: used here, and re-exported so that
# `from vit_inspect.training import build_vit` (and the rest) keeps working.
from .small_vit import (DATA_CONFIG, SHIPPED_WEIGHTS, SPEC_KEY, TRAINED_HERE_KEY, ViTSpec, build_vit, load_trained,
                        shipped_weights, spec_of, trained_here_path, training_metadata, untrained_like, write_trained)

if TYPE_CHECKING:
    from PIL import Image

SHIPPED_ABLATIONS = {DIGITS: "ablations_digits.json"}  # the ablation table `make train` measured
SPLIT_SEED = 0
TEST_FRACTION = 0.2


# ---------------------------------------------------------------- the data


class TrainingData(NamedTuple):
    """A labelled image set split into train and test, as uint8 crops the model sees."""

    name: str                   # "digits", "mnist", ..., or the folder
    train_images: torch.Tensor  # (n_train, 3, S, S) uint8
    train_labels: torch.Tensor  # (n_train,) int64
    test_images: torch.Tensor   # (n_test, 3, S, S) uint8
    test_labels: torch.Tensor   # (n_test,) int64
    class_names: tuple[str, ...]
    split: str                  # how train and test were separated
    split_seed: int | None      # None for a dataset's official split


def load_dataset(dataset: str | os.PathLike = DIGITS, img_size: int = 32, split_seed: int = SPLIT_SEED,
                 root: str | os.PathLike | None = None) -> TrainingData:
    """``dataset``: "digits" | "mnist" | "fashion-mnist" | "cifar10" | a folder of class sub-folders.

    Digits and folders get a stratified split (``TEST_FRACTION`` held out, seeded by
    ``split_seed``); torchvision's sets keep their official train/test split and are
    downloaded into ``root`` (default ``~/.cache/vit-inspect/datasets``) on first use.
    """
    crop = crop_transform(img_size)
    if dataset == DIGITS:
        return _digits(crop, split_seed)
    if isinstance(dataset, str) and dataset in TORCHVISION_DATASETS:
        return _torchvision(dataset, crop, Path(root) if root else default_dataset_root())
    return _folder(Path(dataset), crop, split_seed)


def crop_transform(img_size: int) -> Callable[[Image.Image], Image.Image]:
    """PIL image -> the img_size x img_size crop, exactly the geometric part of ``preprocess``."""
    from timm.data import create_transform

    eval_transform = create_transform(**DATA_CONFIG, input_size=(3, img_size, img_size), is_training=False)
    return split_transform(eval_transform)[0]


def default_dataset_root() -> Path:
    return Path.home() / ".cache" / "vit-inspect" / "datasets"


def _pixels(images, crop: Callable) -> torch.Tensor:
    """PIL images (any mode) -> (n, 3, S, S) uint8 crops."""
    arrays = [np.asarray(crop(load_image(image))) for image in images]  # n x (S, S, 3)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S)


def _stratified(name: str, pixels: torch.Tensor, labels: np.ndarray, class_names, split_seed: int) -> TrainingData:
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
                                       random_state=split_seed)
    except ValueError as err:  # a class with a single image, or too few images to hold any out
        raise VitInspectError(f"{named_argument('dataset', name)}: cannot split into train and test: {err}") from None
    labels = torch.as_tensor(labels, dtype=torch.int64)  # (n,)
    split = f"stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%}, seed {split_seed}"
    return TrainingData(name, pixels[train], labels[train], pixels[test], labels[test], tuple(class_names),
                        split, split_seed)


def _digits(crop, split_seed: int) -> TrainingData:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = np.round(digits.images * 255 / 16).astype(np.uint8)  # (n, 8, 8): 0..16 ink -> 0..255, white on black
    pixels = _pixels([Image.fromarray(scan, mode="L") for scan in scans], crop)  # (n, 3, S, S)
    return _stratified(DIGITS, pixels, digits.target, [str(c) for c in digits.target_names], split_seed)


def digits_writers() -> int:
    """How many people wrote scikit-learn's digits, read from scikit-learn's own description: an int (13).

    scikit-learn ships the test part of UCI's optdigits: "From a total of 43 people, 30
    contributed to the training set and different 13 to the test set." The writers are not
    recorded per image, so a random split puts every writer on both sides.
    """
    from sklearn.datasets import load_digits

    found = re.search(r"different\s+(\d+)\s+to the test set", load_digits().DESCR)
    if found is None:
        raise VitInspectError("scikit-learn's digits description no longer names its test writers")
    return int(found.group(1))


def _folder(folder: Path, crop, split_seed: int) -> TrainingData:
    from torchvision.datasets import ImageFolder

    given = named_argument("dataset", str(folder))  # how the user named it, for the messages
    if not folder.is_dir():
        raise VitInspectError(f"{given}: not one of {', '.join(DATASETS)}, and no such folder")
    try:
        found = ImageFolder(str(folder), loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise VitInspectError(f"{given}: expected one sub-folder of images per class ({err})") from None
    if len(found.classes) < 2:
        raise VitInspectError(f"{given}: found {len(found.classes)} class folder; need at least 2")
    pixels = _pixels((path for path, _ in found.samples), crop)  # (n, 3, S, S)
    return _stratified(str(folder), pixels, np.array(found.targets), found.classes, split_seed)


def _torchvision(name: str, crop, root: Path) -> TrainingData:
    import torchvision.datasets

    parts = [_torchvision_split(getattr(torchvision.datasets, TORCHVISION_DATASETS[name]), name, root, train)
             for train in (True, False)]
    (train_pixels, train_labels, classes), (test_pixels, test_labels, _) = [
        (_pixels((image for image, _ in part), crop), torch.as_tensor(part.targets, dtype=torch.int64),
         part.classes) for part in parts]
    return TrainingData(name, train_pixels, train_labels, test_pixels, test_labels, tuple(classes),
                        "official train/test split (torchvision)", None)


def _torchvision_split(dataset_class, name: str, root: Path, train: bool):
    try:
        return dataset_class(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:  # no network: URLError is an OSError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VitInspectError(
            f"{named_argument('dataset', name)}: torchvision's {dataset_class.__name__} is not in {root} and "
            f"could not be downloaded ({reason}); it needs network once (e.g. on Colab), or use "
            f"{named_argument('dataset', DIGITS)} (offline) or a folder of class sub-folders") from None


def model_input(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 crops (B, 3, S, S) -> the normalised float input (B, 3, S, S), as ``preprocess`` makes it."""
    return _normalise(model, pixels.float() / 255)  # (B, 3, S, S)


def _normalise(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float images (B, 3, S, S) in [0, 1] -> (B, 3, S, S) normalised with the model's mean and std."""
    config = data_config_of(model)
    mean = torch.tensor(config["mean"], dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std  # (B, 3, S, S)


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: AdamW, linear warm-up then cosine decay, label smoothing, light augmentation.

    Augmentation: a random affine per image (rotation up to ``max_rotation`` degrees,
    scale up to +-``max_scale``, shift up to ``max_shift`` of the side), black fill.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    max_rotation: float = 10.0
    max_scale: float = 0.1
    max_shift: float = 0.1
    seed: int = 0


def train_vit(model: nn.Module, data: TrainingData, config: TrainConfig = TrainConfig(), progress: bool = True,
              device: str | torch.device | None = None, threads: int | None = 1) -> dict[str, torch.Tensor]:
    """Train ``model`` in place on ``data.train_*``; test on ``data.test_*`` after every epoch.

    Seeded by ``config.seed`` (batch order, augmentation). Runs on the GPU when there is
    one (``device`` overrides), and leaves the model on the CPU in eval mode. A tqdm bar
    per epoch when ``progress``. Returns per-epoch tensors (E,): "train_loss",
    "train_accuracy", "test_loss", "test_accuracy", "seconds" (elapsed since the
    start), and with a learned position embedding "pos_embed_similarity" (E, gh, gw, gh, gw).

    ``threads``: CPU threads while training (torch's setting is restored after; None keeps
    it). One by default: this model's matrices are so small that a second thread costs
    more in synchronisation than it saves, and on a busy machine it is several times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _train(model, data, config, progress, device)
    finally:
        torch.set_num_threads(before)


def _train(model: nn.Module, data: TrainingData, config: TrainConfig, progress: bool,
           device: str | torch.device | None) -> dict[str, torch.Tensor]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _optimizer(model, config)
    steps = math.ceil(len(data.train_labels) / config.batch_size)
    schedule = _schedule(optimizer, config, steps)
    model.to(device)
    history, start = {}, time.perf_counter()
    for epoch in range(config.epochs):
        bar = _bar(steps, epoch, config.epochs, progress)
        train = _train_epoch(model, data, config, optimizer, schedule, generator, device, bar)
        test = evaluate(model, data.test_images, data.test_labels, device)
        bar.set_postfix(loss=f"{float(train['train_loss']):.3f}", train_acc=f"{float(train['train_accuracy']):.1%}",
                        test_acc=f"{float(test['test_accuracy']):.1%}")
        bar.close()
        _append(history, {**train, **test, "seconds": torch.tensor(time.perf_counter() - start)}, model)
    model.cpu().eval()
    return {key: torch.stack(values) for key, values in history.items()}


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, the class token and the position embedding."""
    skip = model.no_weight_decay()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and n not in skip]
    rest = [p for n, p in params if not (p.ndim >= 2 and n not in skip)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    warmup, total = config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _bar(steps: int, epoch: int, epochs: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress)


def _train_epoch(model, data, config, optimizer, schedule, generator, device, bar) -> dict[str, torch.Tensor]:
    model.train()
    order = torch.randperm(len(data.train_labels), generator=generator)  # (n_train,)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]  # (B,)
        images = augment(data.train_images[batch], config, generator)  # (B, 3, S, S) in [0, 1]
        labels = data.train_labels[batch].to(device)  # (B,)
        logits = model(_normalise(model, images).to(device))  # (B, C)
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += float(loss.detach()) * len(batch)
        correct += int((logits.argmax(dim=-1) == labels).sum())
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    n = len(order)
    return {"train_loss": torch.tensor(loss_sum / n), "train_accuracy": torch.tensor(correct / n)}


def augment(pixels: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float (B, 3, S, S) in [0, 1], each image under its own random affine map."""
    if config.max_rotation == config.max_scale == config.max_shift == 0:
        return pixels.float() / 255  # (B, 3, S, S)
    theta = affine_matrices(pixels.shape[0], config, generator)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(pixels.float() / 255, grid, align_corners=False)  # (B, 3, S, S), black outside


def affine_matrices(batch: int, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random rotation + scale + shift per image, as ``affine_grid`` wants them: (B, 2, 3).

    They map output coordinates (in [-1, 1]) to where to sample the input, so the
    rotation and scale are the inverse of what the image undergoes; a shift of 2 f moves
    the picture by f of its side.
    """
    uniform = torch.rand(batch, 4, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
    angle = uniform[:, 0] * math.radians(config.max_rotation)  # (B,)
    scale = 1 + uniform[:, 1] * config.max_scale  # (B,)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # (B,)
    shift = uniform[:, 2:] * 2 * config.max_shift  # (B, 2)
    rotation = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)  # (B, 2, 2)
    return torch.cat([rotation, shift[:, :, None]], dim=2)  # (B, 2, 3)


@torch.no_grad()
def predict_logits(model: nn.Module, pixels: torch.Tensor, device: str | torch.device = "cpu",
                   batch_size: int = 512) -> torch.Tensor:
    """uint8 crops (n, 3, S, S) -> logits (n, C), in eval mode, on the CPU."""
    model.eval()
    chunks = [model(model_input(model, pixels[i:i + batch_size]).to(device)).float().cpu()
              for i in range(0, len(pixels), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)  # (n, C)


def evaluate(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """{"test_loss", "test_accuracy"} (0-dim tensors) of ``model`` on uint8 crops and their labels."""
    logits = predict_logits(model, pixels, device)  # (n, C)
    return {"test_loss": F.cross_entropy(logits, labels), "test_accuracy": accuracy(logits, labels)}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows of (n, C) logits whose argmax is the label: a 0-dim tensor."""
    return (logits.argmax(dim=-1) == labels).double().mean()


def _append(history: dict, values: dict[str, torch.Tensor], model: nn.Module) -> None:
    if getattr(model, "pos_embed", None) is not None:
        values["pos_embed_similarity"] = pos_embed_similarity(model).cpu()  # (gh, gw, gh, gw)
    for key, value in values.items():
        history.setdefault(key, []).append(value.detach().float())


# ---------------------------------------------------------------- weight files


def save_trained(model: nn.Module, path: str | os.PathLike, data: TrainingData, config: TrainConfig,
                 test_accuracy: float) -> Path:
    """Save ``model`` as safetensors (timm's key layout) with what it is in the header.

    Header: the architecture, the dataset and its split, the recipe, the epochs, the
    test accuracy and the class names, so ``load_vit(weights=path)`` can rebuild it
    (the format: :func:`vit_inspect.small_vit.write_trained`).
    """
    return write_trained(model, path, dataset=data.name, split=data.split, split_seed=data.split_seed,
                         class_names=data.class_names, num_train=len(data.train_labels),
                         num_test=len(data.test_labels), train_config=asdict(config), test_accuracy=test_accuracy)


# ---------------------------------------------------------------- what the model learned


def locality_per_epoch(history: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """From the history's (E, gh, gw, gh, gw) similarities: the two locality gaps per epoch, each (E,).

    "neighbours - far patches" and "same row/column - others", as in
    ``neighbour_similarity_stats``: near 0 for random embeddings, positive once a 2-D
    layout is learned.
    """
    stats = [neighbour_similarity_stats(similarity) for similarity in history["pos_embed_similarity"]]
    return {"neighbours - far patches": torch.stack([s["neighbours_minus_far"] for s in stats]),
            "same row/column - others": torch.stack([s["same_line_minus_other"] for s in stats])}


def pixels_to_image(pixels: torch.Tensor) -> Image.Image:
    """One uint8 crop (3, S, S) -> the RGB PIL image the model sees (for overlays)."""
    from PIL import Image

    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")  # (S, S, 3)


@torch.no_grad()
def pooled_features(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 crops (B, 3, S, S) -> the features the head reads (B, D): the class token after the final norm."""
    tokens = model.forward_features(model_input(model, pixels))  # (B, N, D)
    return model.forward_head(tokens, pre_logits=True)  # (B, D)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C): row = true class, column = predicted class."""
    pairs = labels.long() * num_classes + predictions.long()  # (n,)
    return torch.bincount(pairs, minlength=num_classes ** 2).reshape(num_classes, num_classes)  # (C, C)


def linear_baseline(data: TrainingData) -> dict[str, torch.Tensor]:
    """Logistic regression on the raw pixels of the same split: {"accuracy": 0-dim, "predictions": (n_test,)}."""
    from sklearn.linear_model import LogisticRegression

    train = data.train_images.flatten(1).numpy() / 255  # (n_train, 3*S*S)
    test = data.test_images.flatten(1).numpy() / 255  # (n_test, 3*S*S)
    classifier = LogisticRegression(max_iter=2000).fit(train, data.train_labels.numpy())
    predictions = torch.from_numpy(classifier.predict(test)).long()  # (n_test,)
    return {"accuracy": (predictions == data.test_labels).double().mean(), "predictions": predictions}


def class_token_maps(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two explanations of the class token over the patches, each (B, gh, gw), from one pass.

    "rollout": attention rollout (mean over heads, residual added); "last-layer
    attention": the class token's attention in the last block, mean over heads.
    """
    grid, prefix = grid_size_of(model), num_prefix_tokens_of(model)
    attention = capture(model, model_input(model, pixels))["attention"]  # (B, L, H, N, N)
    last = attention[:, -1, :, 0].mean(dim=1)  # (B, N)
    return {"rollout": rollout_to_grid(attention_rollout(attention), grid, prefix),  # (B, gh, gw)
            "last-layer attention": tokens_to_grid(last, grid, prefix)}  # (B, gh, gw)


def patch_ink(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """uint8 crops (B, 3, S, S) -> mean brightness of every patch (B, gh, gw) in [0, 1] (ink is bright)."""
    grey = pixels.float().mean(dim=1, keepdim=True) / 255  # (B, 1, S, S)
    return F.avg_pool2d(grey, patch_size).squeeze(1)  # (B, gh, gw)


def ink_ratio(maps: torch.Tensor, ink: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Mean map value on ink patches / on background patches, per image: (..., B, gh, gw), (B, gh, gw) -> (..., B).

    Above 1: the map favours the digit's strokes over the empty background. Images
    without ink or without background give NaN. Leading dimensions of ``maps`` (e.g.
    randomisation steps) share the same ink.
    """
    return bright_ratio(maps, ink, threshold)  # the measure notebook 06 prints for photos too


def first_block_distance(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Mean attention distance in pixels of every head of the first block, over the images: (H,)."""
    attention = capture(model, model_input(model, pixels), layers=[0])["attention"]  # (B, 1, H, N, N)
    distance = mean_attention_distance(attention, grid_size_of(model), num_prefix_tokens_of(model),
                                       patch_size_of(model))  # (B, 1, H)
    return distance.mean(dim=0)[0]  # (H,)


# ---------------------------------------------------------------- faithfulness: deletion curves


def importance_order(maps: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) importance -> (B, P) patch indices (row-major), most important first."""
    return maps.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, P)


def random_order(batch: int, num_patches: int, seed: int) -> torch.Tensor:
    """(B, P): an independent random permutation of the patches per image, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num_patches, generator=generator).argsort(dim=1)  # (B, P)


def delete_patches(pixels: torch.Tensor, order: torch.Tensor, count: int, patch_size: int,
                   fill: int = 0) -> torch.Tensor:
    """uint8 crops (B, 3, S, S) with the first ``count`` patches of ``order`` (B, P) set to ``fill`` (black)."""
    B, _, S, _ = pixels.shape
    g = S // patch_size
    ranks = order.argsort(dim=1)  # (B, P): where each patch comes in the order
    deleted = (ranks < count).reshape(B, 1, g, g)  # (B, 1, g, g)
    mask = deleted.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # (B, 1, S, S)
    return torch.where(mask, torch.full_like(pixels, fill), pixels)  # (B, 3, S, S)


def deletion_curve(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                   steps: int = 8) -> torch.Tensor:
    """True-class probability as patches are deleted in ``order``: (B, steps + 1).

    Column k: after deleting round(k / steps * P) patches (black), so column 0 is the
    intact image and the last column an all-black one. A faithful importance order
    makes the probability fall fast (small area under the curve).
    """
    P = order.shape[1]
    columns = [_true_class_probability(model, delete_patches(pixels, order, round(k / steps * P),
                                                             patch_size_of(model)), labels)
               for k in range(steps + 1)]  # (steps + 1) x (B,)
    return torch.stack(columns, dim=1)  # (B, steps + 1)


def _true_class_probability(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probabilities = predict_logits(model, pixels).softmax(dim=-1)  # (B, C)
    return probabilities.gather(1, labels[:, None])[:, 0]  # (B,)


def curve_area(curves: torch.Tensor) -> torch.Tensor:
    """Area under (..., K) curves sampled evenly on [0, 1] (trapezoid rule): (...)."""
    return torch.trapezoid(curves, dx=1 / (curves.shape[-1] - 1), dim=-1)


def deletion_curves(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, steps: int = 8,
                    random_seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, torch.Tensor]:
    """Mean deletion curves (steps + 1,) over the images, by order of importance.

    Keys: "rollout", "last-layer attention", and "random (seed s)" for each seed.
    """
    maps = class_token_maps(model, pixels)
    B, P = pixels.shape[0], maps["rollout"][0].numel()
    orders = {name: importance_order(heat) for name, heat in maps.items()}
    orders.update({f"random (seed {seed})": random_order(B, P, seed) for seed in random_seeds})
    return {name: deletion_curve(model, pixels, labels, order, steps).mean(dim=0) for name, order in orders.items()}


# ---------------------------------------------------------------- model-randomisation sanity check


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between matching maps: (B, ...) x 2 -> (B,)."""
    ranks = [x.flatten(1).argsort(dim=1).argsort(dim=1).double() for x in (a, b)]  # 2 x (B, P)
    centred = [r - r.mean(dim=1, keepdim=True) for r in ranks]  # 2 x (B, P)
    return F.cosine_similarity(centred[0], centred[1], dim=1)  # (B,)


def randomise_top_blocks(model: nn.Module, count: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose top ``count`` blocks have fresh random weights (timm's init).

    timm's own initialisation, the distribution training started from, as in Adebayo et al.
    """
    randomised = copy.deepcopy(model).eval()
    fresh = build_vit(spec_of(model), seed)
    depth = len(model.blocks)
    for index in range(depth - count, depth):
        randomised.blocks[index].load_state_dict(fresh.blocks[index].state_dict())
    return randomised


def randomised_maps(model: nn.Module, pixels: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Cascading randomisation (Adebayo et al. 2018): each explanation as the top blocks are destroyed.

    Entry k of each (L + 1, B, gh, gw) stack: the map after re-initialising the top k
    blocks (k = 0: the model itself); the embeddings keep their weights. Keys as in
    :func:`class_token_maps`.
    """
    steps = [class_token_maps(randomise_top_blocks(model, count, seed), pixels)
             for count in range(len(model.blocks) + 1)]
    return {name: torch.stack([maps[name] for maps in steps]) for name in steps[0]}  # (L + 1, B, gh, gw)


def randomisation_curves(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean Spearman correlation with the intact model's maps, per randomisation step: (L + 1, B, gh, gw) -> (L + 1,).

    Near 1: the explanation did not notice the destroyed blocks (it explains the
    image, not the model); near 0: it depends on those blocks' weights.
    """
    return {name: torch.stack([rank_correlation(stack[0], step).mean() for step in stack])
            for name, stack in maps.items()}


# ---------------------------------------------------------------- ablations


ABLATIONS: dict[str, dict] = {
    "baseline (class token, learned position embedding, patch 4)": {},
    "no class token (mean pooling)": {"class_token": False},
    "no position embedding": {"pos_embed": "none"},
    "fixed 2-D sin-cos position embedding": {"pos_embed": "sincos"},
    "patch 8 (4x4 grid)": {"patch_size": 8},
}


def run_ablations(data: TrainingData, spec: ViTSpec, config: TrainConfig, seeds: dict[str, tuple[int, ...]],
                  ablations: dict[str, dict] = ABLATIONS) -> dict[str, torch.Tensor]:
    """Train each variant of ``spec`` with each of its seeds (model init and data order): test accuracies.

    ``seeds`` maps an ablation's name to its seeds; returns {name: (len(seeds),)} accuracies.
    """
    results = {}
    for name, changes in ablations.items():
        variant = dataclasses.replace(spec, **changes)
        accuracies = []
        for seed in seeds[name]:
            model = build_vit(variant, seed)
            history = train_vit(model, data, dataclasses.replace(config, seed=seed), progress=False)
            accuracies.append(history["test_accuracy"][-1])
        results[name] = torch.stack(accuracies)
    return results


# The short recipe of the ablation table: 8 epochs, batches of 32, no augmentation, no label smoothing.
ABLATION_RECIPE = TrainConfig(epochs=8, warmup_epochs=1, batch_size=32, label_smoothing=0.0,
                              max_rotation=0.0, max_scale=0.0, max_shift=0.0)
ABLATION_SEEDS = {name: (0, 1, 2) for name in ABLATIONS}  # three seeds per row: the spread shows


class AblationTable(NamedTuple):
    """Test accuracies {variant: (seeds,)} of :func:`run_ablations`, with the recipe and seeds that made them."""

    accuracies: dict[str, torch.Tensor]
    seeds: dict[str, tuple[int, ...]]
    config: TrainConfig
    dataset: str


def save_ablations(table: AblationTable, path: str | os.PathLike) -> Path:
    """Write ``table`` as JSON (variants in order, accuracies as floats)."""
    record = {"dataset": table.dataset, "train_config": asdict(table.config), "torch": torch.__version__,
              "variants": [{"name": name, "seeds": list(table.seeds[name]), "test_accuracy": values.tolist()}
                           for name, values in table.accuracies.items()]}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_ablations(path: str | os.PathLike | None = None) -> AblationTable:
    """The table from :func:`save_ablations`; by default the one shipped for the digits."""
    path = Path(path) if path is not None else data_dir() / SHIPPED_ABLATIONS[DIGITS]
    try:
        record = json.loads(path.read_text())
        variants = record["variants"]
        return AblationTable({v["name"]: torch.tensor(v["test_accuracy"]) for v in variants},
                             {v["name"]: tuple(v["seeds"]) for v in variants},
                             TrainConfig(**record["train_config"]), record["dataset"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VitInspectError(f"{path}: not an ablation table written by `vit-inspect train --ablations` ({err})") \
            from None
