"""Notebook 11_fine_tuning: reusing a trained ViT (fresh head, linear probe, full fine-tune) and its price.

The recipe on any timm ViT: ``reset_classifier`` puts a fresh D x K head on the kept
backbone (patch embedding, position embedding, blocks, final norm); a linear probe
trains only that head, a full fine-tune trains everything; a higher resolution keeps
the patch size and interpolates the position embedding (``model_at_resolution`` of
notebook 02). :func:`fine_tune` does it on a copy, the caller's model untouched.

Two measurements on the bundled digits, with notebook 09's model, data and training
loop (``vit_inspect.training``), every number from several seeds:

- data hunger: the small ViT against a small CNN of about the same parameter count and
  logistic regression, at fractions of the training set (:func:`data_hunger`);
- transfer: pretrain on digits 0-4, then learn 5-9 from k images per class by linear
  probe, full fine-tune, or from scratch (:func:`transfer`).

``make train`` runs both (``python -m vit_inspect.fine_tuning``) into JSON tables that
ship in ``data/`` (:func:`load_sweep`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import VitInspectError
from .images import data_dir
from .position_embeddings import model_at_resolution
from .training import (ABLATION_RECIPE, DATA_CONFIG, TrainConfig, TrainingData, ViTSpec, build_vit, evaluate,
                       linear_baseline, load_dataset, save_trained, train_vit)
from .weights import ordinary_permissions

FINE_TUNE_MODES = ("probe", "full")
SHIPPED_SWEEPS = {"data_hunger": "data_hunger_digits.json", "transfer": "transfer_digits.json"}

# ---------------------------------------------------------------- the recipe on any timm ViT


class FineTuned(NamedTuple):
    """What :func:`fine_tune` returns: the new model (eval mode, CPU) and its per-epoch history."""

    model: nn.Module
    history: dict[str, torch.Tensor]


def fine_tune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mode: str = "probe",
              epochs: int = 8, seed: int = 0, config: TrainConfig = ABLATION_RECIPE, reset_head: bool = True,
              held_out: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = False) -> FineTuned:
    """Fine-tune a copy of timm ViT ``model`` on uint8 crops ``images`` (n, 3, S, S) and ``labels`` (n,).

    ``mode="probe"``: only a fresh head is trained (a linear probe on the frozen backbone);
    ``"full"``: every parameter. With ``reset_head`` the head becomes a fresh D x K layer,
    K = the number of classes in ``labels`` (labels 0..K-1). Images larger than the
    model's input: the copy's position embedding is interpolated to the new grid first.
    Training is notebook 09's loop (``train_vit``) with ``config``, ``epochs`` and ``seed``.
    History: per-epoch (E,) tensors of ``train_vit``; the "test_*" ones on ``held_out``
    (images, labels) when given, else left out. ``model`` is not changed.
    """
    if mode not in FINE_TUNE_MODES:
        raise VitInspectError(f"mode must be one of {', '.join(FINE_TUNE_MODES)}, got {mode!r}")
    tuned = prepared_copy(model, images.shape[-1], num_classes_of(labels) if reset_head else None)
    set_trainable(tuned, mode)
    test = held_out if held_out is not None else (images[:1], labels[:1])  # train_vit tests each epoch: 1 image
    data = TrainingData("fine-tune", images, labels, test[0], test[1], (), "given", None)
    history = train_vit(tuned, data, dataclasses.replace(config, epochs=epochs, seed=seed), progress=progress)
    if held_out is None:
        history = {key: value for key, value in history.items() if not key.startswith("test_")}
    return FineTuned(tuned.requires_grad_(True).eval(), history)


def num_classes_of(labels: torch.Tensor) -> int:
    """K for labels 0..K-1; a clear error for labels that are not."""
    classes = labels.unique()
    if len(classes) < 2 or classes[0] != 0 or classes[-1] != len(classes) - 1:
        raise VitInspectError(f"labels must be 0..K-1 with K >= 2, got the classes {classes.tolist()}")
    return len(classes)


def prepared_copy(model: nn.Module, img_size: int, num_classes: int | None) -> nn.Module:
    """A deep copy of ``model`` for ``img_size`` inputs (interpolated position embedding) with a fresh K-way head."""
    if img_size != input_size_of(model):
        tuned = model_at_resolution(model, img_size)
    else:
        tuned = copy.deepcopy(model)
    if num_classes is not None:
        with torch.random.fork_rng(devices=[]):
            tuned.reset_classifier(num_classes)
        _record_num_classes(tuned, num_classes)
    return tuned


def input_size_of(model: nn.Module) -> int:
    """The side in pixels of the square images a timm ViT takes now."""
    return int(model.patch_embed.img_size[0])


def _record_num_classes(model: nn.Module, num_classes: int) -> None:
    """Keep the data config (and a build_vit spec) in step with the new head."""
    config = dict(getattr(model, "pretrained_cfg", None) or {})
    config["num_classes"] = num_classes
    if "vit_inspect_spec" in config:
        config["vit_inspect_spec"] = {**config["vit_inspect_spec"], "num_classes": num_classes}
    model.pretrained_cfg = model.default_cfg = config


def set_trainable(model: nn.Module, mode: str) -> None:
    """Probe: only the head's parameters require gradients; full: all of them (fixed tables stay fixed)."""
    head = {id(p) for p in head_parameters(model)}
    for parameter in model.parameters():
        if mode == "probe":
            parameter.requires_grad_(id(parameter) in head)
    if mode == "probe":
        return
    fixed = {"pos_embed"} if _has_fixed_pos_embed(model) else set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in fixed)


def _has_fixed_pos_embed(model: nn.Module) -> bool:
    spec = (getattr(model, "pretrained_cfg", None) or {}).get("vit_inspect_spec") or {}
    return spec.get("pos_embed") == "sincos"


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the classification head (timm's ``get_classifier``)."""
    return list(model.get_classifier().parameters())


def reuse_table(model: nn.Module, num_classes: int) -> dict[str, dict[str, int]]:
    """Per part of a timm ViT given a fresh ``num_classes`` head: its parameter count and what happens to it.

    Rows: "patch embedding E", "class token", "position embedding", "blocks (q/k/v, MLPs, norms)",
    "final norm", "head". Columns: "parameters" (after the new head), "kept", "replaced",
    "trained (probe)", "trained (full)": counts.
    """
    fresh = prepared_copy(model, input_size_of(model), num_classes)
    rows = {}
    for part, names in _parts(fresh).items():
        count = sum(dict(fresh.named_parameters())[name].numel() for name in names)
        is_head = part == "head"
        rows[part] = {"parameters": count, "kept": 0 if is_head else count, "replaced": count if is_head else 0,
                      "trained (probe)": count if is_head else 0, "trained (full)": count}
    return rows


def _parts(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names of a timm ViT grouped into the parts of :func:`reuse_table`."""
    prefixes = {"patch embedding E": "patch_embed.", "class token": "cls_token", "position embedding": "pos_embed",
                "blocks (q/k/v, MLPs, norms)": "blocks.", "final norm": "norm.", "head": "head."}
    names = [name for name, _ in model.named_parameters()]
    parts = {part: [n for n in names if n.startswith(prefix)] for part, prefix in prefixes.items()}
    grouped = {n for found in parts.values() for n in found}
    parts["other (fc_norm, registers, ...)"] = [n for n in names if n not in grouped]
    return {part: found for part, found in parts.items() if found}


def changed_parameters(before: nn.Module, after: nn.Module) -> dict[str, bool]:
    """{name: whether it differs} for every parameter the two models share with the same shape."""
    theirs = dict(after.named_parameters())
    return {name: not torch.equal(p.detach(), theirs[name].detach()) for name, p in before.named_parameters()
            if name in theirs and theirs[name].shape == p.shape}


def chosen_training_images(dataset: str | os.PathLike, model: nn.Module, per_class_count: int | None,
                           seed: int) -> tuple[TrainingData, torch.Tensor, torch.Tensor]:
    """The dataset at ``model``'s input size, and ``per_class_count`` seeded training images of each class.

    Returns (data, images (m, 3, S, S) uint8, labels (m,)).
    """
    data = load_dataset(dataset, img_size=input_size_of(model))
    chosen = per_class(data.train_labels, per_class_count, seed)  # (m,)
    return data, data.train_images[chosen], data.train_labels[chosen]


def save_fine_tuned(model: nn.Module, path: str | os.PathLike, data: TrainingData, accuracy: float,
                    mode: str) -> Path:
    """Save a fine-tuned model as safetensors; a notebook-09 ViT in ``save_trained``'s format (``load_vit`` reads it).

    Any other timm ViT: its state dict, with the classes and the mode in the header.
    """
    from safetensors.torch import save_file

    if "vit_inspect_spec" in (getattr(model, "pretrained_cfg", None) or {}):
        return save_trained(model, path, data, dataclasses.replace(TrainConfig(), epochs=0), accuracy)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    header = {"fine_tuned": mode, "dataset": str(data.name), "class_names": json.dumps(list(data.class_names)),
              "num_classes": str(len(data.class_names)), "test_accuracy": f"{accuracy:.6f}"}
    save_file(state, str(path), metadata=header)
    return ordinary_permissions(Path(path))


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 crops (n, 3, S, S) -> (n, 3, size, size) uint8, bilinear (e.g. 32 px CIFAR-10 for a 224 px ViT)."""
    resized = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", align_corners=False)  # (n, 3, s, s)
    return resized.round().clamp(0, 255).to(torch.uint8)


def compare_modes(model: nn.Module, data: TrainingData, per_class_count: int | None, epochs: int,
                  seed: int = 0, progress: bool = False) -> dict[str, torch.Tensor]:
    """Linear probe and full fine-tune of ``model`` on ``per_class_count`` images per class of ``data``.

    Returns {"linear probe", "full fine-tune"}: test accuracy (0-dim) on ``data``'s test set.
    """
    chosen = per_class(data.train_labels, per_class_count, seed)  # (m,)
    images, labels = data.train_images[chosen], data.train_labels[chosen]
    return {name: evaluate(fine_tune(model, images, labels, mode=mode, epochs=epochs, seed=seed,
                                     progress=progress).model, data.test_images, data.test_labels)["test_accuracy"]
            for name, mode in (("linear probe", "probe"), ("full fine-tune", "full"))}


# ---------------------------------------------------------------- a small CNN, the control


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (32, 64, 192 channels, batch norm, ReLU, 2x2 max pool twice), global mean, linear.

    About as many parameters as notebook 09's ViT (132k vs 142k); locality and
    translation equivariance are built in. Carries the same data config as the ViT.
    """

    def __init__(self, num_classes: int = 10, channels: tuple[int, ...] = (32, 64, 192), img_size: int = 32):
        super().__init__()
        layers, width = [], 3
        for index, out in enumerate(channels):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if index < len(channels) - 1 else []
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.pretrained_cfg = {**DATA_CONFIG, "input_size": (3, img_size, img_size), "num_classes": num_classes,
                               "architecture": "small_cnn"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> logits (B, C)."""
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, C, s, s) -> (B, C) -> (B, K)

    def no_weight_decay(self) -> set[str]:
        """train_vit's optimiser asks every model; biases and norms are 1-D and skipped anyway."""
        return set()


def build_cnn(num_classes: int = 10, seed: int = 0) -> SmallCNN:
    """A :class:`SmallCNN` with seeded random weights, eval mode; the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(num_classes).eval()


def parameter_count(model: nn.Module) -> int:
    """All parameters of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- data hunger

FRACTIONS = (0.05, 0.25, 1.0)
SWEEP_SEEDS = (0, 1, 2)
MIN_EPOCH_IMAGES = 540  # a small subset is repeated within an epoch up to this many images (more steps)


def subset(data: TrainingData, fraction: float, seed: int, min_epoch_images: int = MIN_EPOCH_IMAGES,
           ) -> TrainingData:
    """A stratified ``fraction`` of the training images (seeded), the test set unchanged.

    The subset is repeated (tiled) until an epoch holds at least ``min_epoch_images``
    images, so a small fraction still gets a useful number of steps per epoch.
    """
    chosen = stratified_indices(data.train_labels, fraction, seed)  # (m,)
    repeats = max(1, math.ceil(min_epoch_images / len(chosen)))
    tiled = chosen.repeat(repeats)  # (m * repeats,)
    return data._replace(train_images=data.train_images[tiled], train_labels=data.train_labels[tiled],
                         split=f"{data.split}; {fraction:.0%} of the training images (seed {seed}) x{repeats}")


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices (m,) of a seeded random ``fraction`` of each class (at least one image per class)."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in labels.unique():
        members = (labels == label).nonzero()[:, 0]  # (n_c,)
        count = max(1, round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(picked).sort().values  # (m,)


def per_class(labels: torch.Tensor, k: int | None, seed: int) -> torch.Tensor:
    """Indices (m,) of ``k`` seeded random images of each class (all of them for None)."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in labels.unique():
        members = (labels == label).nonzero()[:, 0]  # (n_c,)
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(picked).sort().values  # (m,)


def data_hunger_row(data: TrainingData, fraction: float, seed: int,
                    config: TrainConfig = ABLATION_RECIPE) -> dict[str, torch.Tensor]:
    """Test accuracy (0-dim) of the ViT, the CNN and logistic regression on one seeded ``fraction``."""
    part = subset(data, fraction, seed)
    recipe = dataclasses.replace(config, seed=seed)
    vit = build_vit(dataclasses.replace(ViTSpec(), num_classes=len(data.class_names)), seed)
    cnn = build_cnn(len(data.class_names), seed)
    once = subset(data, fraction, seed, min_epoch_images=0)
    return {"vit": train_vit(vit, part, recipe, progress=False)["test_accuracy"][-1],
            "cnn": train_vit(cnn, part, recipe, progress=False)["test_accuracy"][-1],
            "logistic regression": linear_baseline(once)["accuracy"].float()}


def data_hunger(data: TrainingData, fractions=FRACTIONS, seeds=SWEEP_SEEDS, log=print) -> dict[str, torch.Tensor]:
    """Test accuracies {model: (F, S)} at each fraction (rows) and seed (columns), plus "fractions" (F,)
    and "train_images" (F,), the distinct images per fraction."""
    rows = {}
    for fraction in fractions:
        for seed in seeds:
            row = data_hunger_row(data, fraction, seed)
            log(f"data hunger {fraction:.0%} seed {seed}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in row.items()))
            for name, value in row.items():
                rows.setdefault(name, []).append(value)
    table = {name: torch.stack(values).reshape(len(fractions), len(seeds)) for name, values in rows.items()}
    sizes = [len(stratified_indices(data.train_labels, f, 0)) for f in fractions]
    return {**table, "fractions": torch.tensor(fractions, dtype=torch.float64), "train_images": torch.tensor(sizes)}


# ---------------------------------------------------------------- transfer: pretrain on 0-4, learn 5-9

PER_CLASS = (5, 20, None)  # None: every training image of the class
STEP_IMAGES = 1600  # each fine-tuning run sees about this many images (epochs = this / n, at least 8)
SOURCE_CLASSES = 5  # digits 0..4 pretrain, 5..9 are the new task
PRETRAIN_RECIPE = TrainConfig()  # notebook 09's full recipe (20 epochs, augmentation) on digits 0-4


def classes_part(data: TrainingData, low: int, high: int) -> TrainingData:
    """Only the images of classes low..high-1, relabelled 0..high-low-1 (train and test)."""
    keep_train = (data.train_labels >= low) & (data.train_labels < high)
    keep_test = (data.test_labels >= low) & (data.test_labels < high)
    return data._replace(train_images=data.train_images[keep_train], train_labels=data.train_labels[keep_train] - low,
                         test_images=data.test_images[keep_test], test_labels=data.test_labels[keep_test] - low,
                         class_names=data.class_names[low:high], split=f"{data.split}; classes {low}-{high - 1}")


def epochs_for(num_images: int, step_images: int = STEP_IMAGES) -> int:
    """Epochs so that a run sees about ``step_images`` images, at least 8."""
    return max(ABLATION_RECIPE.epochs, math.ceil(step_images / num_images))


def pretrain_source(data: TrainingData, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """The small ViT trained on digits 0-4 with notebook 09's recipe: (model, its test accuracy on 0-4)."""
    source = classes_part(data, 0, SOURCE_CLASSES)
    model = build_vit(dataclasses.replace(ViTSpec(), num_classes=SOURCE_CLASSES), seed)
    history = train_vit(model, source, dataclasses.replace(PRETRAIN_RECIPE, seed=seed), progress=False)
    return model, history["test_accuracy"][-1]


def transfer_row(pretrained: nn.Module, target: TrainingData, k: int | None, seed: int) -> dict[str, torch.Tensor]:
    """Test accuracy (0-dim) on the target classes after learning from ``k`` images per class, three ways."""
    chosen = per_class(target.train_labels, k, seed)  # (m,)
    images, labels = target.train_images[chosen], target.train_labels[chosen]
    epochs = epochs_for(len(chosen))
    scratch = build_vit(dataclasses.replace(ViTSpec(), num_classes=SOURCE_CLASSES), seed + 1000)
    runs = {"linear probe": (pretrained, "probe"), "full fine-tune": (pretrained, "full"),
            "from scratch": (scratch, "full")}
    return {name: evaluate(fine_tune(model, images, labels, mode=mode, epochs=epochs, seed=seed).model,
                           target.test_images, target.test_labels)["test_accuracy"].float()
            for name, (model, mode) in runs.items()}


def transfer(data: TrainingData, per_class_counts=PER_CLASS, seeds=SWEEP_SEEDS, log=print) -> dict[str, torch.Tensor]:
    """Accuracies {way: (k values, seeds)} on digits 5-9, plus "pretrain accuracy" (S,) on 0-4 and "k" (k values,)
    with -1 for all."""
    target = classes_part(data, SOURCE_CLASSES, 2 * SOURCE_CLASSES)
    rows, pretrain = {}, []
    for seed in seeds:
        model, accuracy = pretrain_source(data, seed)
        pretrain.append(accuracy.float())
        log(f"transfer seed {seed}: pretrained on 0-4, test accuracy {float(accuracy):.3f}")
        for k in per_class_counts:
            row = transfer_row(model, target, k, seed)
            log(f"transfer k={k or 'all'} seed {seed}: " + ", ".join(f"{n} {float(v):.3f}" for n, v in row.items()))
            for name, value in row.items():
                rows.setdefault(name, []).append(value)
    table = {name: torch.stack(values).reshape(len(seeds), len(per_class_counts)).T for name, values in rows.items()}
    return {**table, "pretrain accuracy": torch.stack(pretrain),
            "k": torch.tensor([k if k is not None else -1 for k in per_class_counts])}


# ---------------------------------------------------------------- the tables that ship


def save_sweep(table: dict[str, torch.Tensor], path: str | os.PathLike, recipe: dict) -> Path:
    """Write a sweep's tensors as nested lists, with its recipe, as JSON."""
    record = {"recipe": recipe, "torch": torch.__version__,
              "results": {name: value.tolist() for name, value in table.items()}}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_sweep(name: str, path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A table of :func:`save_sweep` ("data_hunger" or "transfer"; by default the shipped one): (tensors, recipe)."""
    path = Path(path) if path is not None else data_dir() / SHIPPED_SWEEPS[name]
    try:
        record = json.loads(path.read_text())
        return {key: torch.tensor(value) for key, value in record["results"].items()}, record["recipe"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VitInspectError(f"{path}: not a sweep table written by `python -m vit_inspect.fine_tuning` ({err})") \
            from None


def spread(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean, min and max over the last (seeds) dimension: each (...)."""
    return {"mean": values.mean(dim=-1), "min": values.min(dim=-1).values, "max": values.max(dim=-1).values}


def recipes() -> dict[str, dict]:
    """What each sweep did, as stored beside its numbers."""
    short = dataclasses.asdict(ABLATION_RECIPE)
    return {"data_hunger": {"train_config": short, "fractions": list(FRACTIONS), "seeds": list(SWEEP_SEEDS),
                            "min_epoch_images": MIN_EPOCH_IMAGES, "vit": ViTSpec().name,
                            "vit_parameters": parameter_count(build_vit()), "cnn_parameters": parameter_count(build_cnn()),
                            "logistic regression": "scikit-learn LogisticRegression(max_iter=2000) on raw pixels"},
            "transfer": {"train_config": short, "per_class": [k or "all" for k in PER_CLASS], "seeds": list(SWEEP_SEEDS),
                         "step_images": STEP_IMAGES, "source classes": "0-4", "target classes": "5-9",
                         "pretrain_config": dataclasses.asdict(PRETRAIN_RECIPE)}}


def run_sweeps(out: Path, force: bool = False, threads: int = 1) -> list[Path]:
    """Measure both sweeps on the digits into ``out``/ (the files of ``SHIPPED_SWEEPS``)."""
    paths = {name: out / file for name, file in SHIPPED_SWEEPS.items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise VitInspectError(f"{', '.join(existing)}: exists; pass --force to overwrite")
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    measured = {"data_hunger": data_hunger(data), "transfer": transfer(data)}
    return [save_sweep(measured[name], path, recipes()[name]) for name, path in paths.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_inspect.fine_tuning",
                                     description="measure notebook 11's data-hunger and transfer sweeps")
    parser.add_argument("out", type=Path, help="folder for data_hunger_digits.json and transfer_digits.json")
    parser.add_argument("--force", action="store_true", help="overwrite existing tables")
    args = parser.parse_args(argv)
    try:
        for path in run_sweeps(args.out, args.force):
            print(f"written: {path}")
    except VitInspectError as err:
        print(f"vit_inspect.fine_tuning: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
