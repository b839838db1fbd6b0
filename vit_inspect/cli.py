"""``vit-inspect`` command line: report, distance, download, train, finetune, check.

Every argument is checked, with a message in command-line terms, before torch and timm
are imported or any weights are built: ``--help`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .dataset_names import DATASETS
from .errors import VitInspectError, command_line_messages, weights_argument
from .model_info import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch
    from torch import nn
    from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VALUE_OPTIONS = ("--query", "--layer")  # options whose value may start with "-"
MAX_EXIT_SKIPPED = 100  # `distance` exits with the number of skipped files, capped below the shell's 126+


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-inspect", description="Look inside a timm Vision Transformer.")
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="figure + summary.json for one image")
    report.add_argument("image", type=Path)
    report.add_argument("--out", type=Path, required=True, help="output folder")
    _add_model_arguments(report)
    report.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    report.add_argument("--query", default=None, metavar="ROW,COL",
                        help="patch whose per-head attention is drawn, 0-based (default: the centre patch)")
    report.add_argument("--layer", default="0", metavar="L",
                        help="block index for the per-head attention, 0 = first (default: 0)")
    report.set_defaults(run=run_report)

    distance = commands.add_parser("distance", help="mean attention distance over a folder of images")
    distance.add_argument("folder", type=Path, help="folder of images (.png, .jpg, ...; not recursive)")
    distance.add_argument("--out", type=Path, default=None, help="write the result as JSON to this file")
    _add_model_arguments(distance)
    distance.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    distance.add_argument("--strict", action="store_true",
                          help="stop at the first unreadable file (default: list it, skip it, and exit with "
                               "the number of skipped files)")
    distance.set_defaults(run=run_distance)

    download = commands.add_parser("download", help="fetch pretrained weights for offline use")
    download.add_argument("--model", default=DEFAULT_MODEL)
    download.add_argument("--to", type=Path, default=None, help="folder (default: the Hugging Face cache)")
    download.set_defaults(run=run_download)

    train = commands.add_parser("train", help="train a small ViT from scratch (default: the bundled digits, offline)")
    train.add_argument("--dataset", default="digits",
                       help=f"{' | '.join(DATASETS)} | PATH of a folder with one sub-folder "
                            "of images per class (default: digits, which needs no network)")
    train.add_argument("--epochs", default=None, metavar="N",
                       help="passes over the training images (default: the recipe's, as for the shipped weights)")
    train.add_argument("--out", type=Path, default=None, metavar="FILE.safetensors",
                       help="where the weights go (default: vit_DATASET.safetensors)")
    train.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    train.add_argument("--seed", default="0", metavar="S", help="model initialisation and batch order (default: 0)")
    train.add_argument("--ablations", type=Path, default=None, metavar="FILE.json",
                       help="also train each ablation variant with the short recipe and write their test "
                            "accuracies here (several minutes on a CPU)")
    train.add_argument("--data-dir", type=Path, default=None,
                       help="where torchvision's datasets are kept (default: ~/.cache/vit-inspect/datasets)")
    train.set_defaults(run=run_train)

    finetune = commands.add_parser("finetune", help="fine-tune a ViT on a folder of class sub-folders or the digits "
                                                    "(a fresh head; a linear probe or every parameter)")
    finetune.add_argument("--dataset", default="digits",
                          help="digits | PATH of a folder with one sub-folder of images per class (default: digits)")
    finetune.add_argument("--mode", default="probe", help="probe (only the new head) | full (default: probe)")
    finetune.add_argument("--labels-per-class", default=None, metavar="K",
                          help="learn from K training images per class (default: all)")
    finetune.add_argument("--epochs", default=None, metavar="N", help="passes over the chosen images "
                          "(default: enough for about 1,600 images, at least 8)")
    finetune.add_argument("--seed", default="0", metavar="S", help="choice of images, new head, batch order")
    finetune.add_argument("--model", default=DEFAULT_MODEL, help="timm model name, for --weights other than "
                          "a file of `vit-inspect train` (default: %(default)s)")
    finetune.add_argument("--weights", default="digits",
                          help="digits (the small ViT trained here, default) | pretrained | random | PATH")
    finetune.add_argument("--out", type=Path, default=None, metavar="FILE.safetensors",
                          help="where the fine-tuned weights go (default: finetuned_DATASET.safetensors)")
    finetune.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    finetune.set_defaults(run=run_finetune)

    check = commands.add_parser("check", help="run a homework notebook and check each task against the reference")
    check.add_argument("notebook", type=Path, help="the student's .ipynb")
    check.add_argument("--timeout", type=int, default=300, help="seconds one cell may run (default: 300)")
    check.set_defaults(run=run_check)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="timm model name (default: %(default)s)")
    parser.add_argument("--weights", default="auto", help="auto | random | pretrained | PATH (default: auto)")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--query -1,3`` -> ``--query=-1,3``, so argparse does not take ``-1,3`` for an option."""
    joined, rest = [], list(argv)
    while rest:
        token = rest.pop(0)
        if token in VALUE_OPTIONS and rest and rest[0].startswith("-") and rest[0] != "--":
            token = f"{token}={rest.pop(0)}"
        joined.append(token)
    return joined


# ---------------------------------------------------------------- report

def parse_query(text: str) -> tuple[int, int]:
    """"ROW,COL" -> (row, col), both >= 0; a one-line error for anything else."""
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise VitInspectError(f"--query {text}: expected ROW,COL, two integers from 0 (e.g. 7,7)") from None
    if row < 0 or col < 0:
        raise VitInspectError(f"--query {text}: rows and columns are numbered from 0")
    return row, col


def parse_layer(text: str) -> int:
    """"L" -> L >= 0; a one-line error for anything else."""
    try:
        layer = int(text)
    except ValueError:
        raise VitInspectError(f"--layer {text}: expected a block index, an integer from 0") from None
    if layer < 0:
        raise VitInspectError(f"--layer {text}: blocks are numbered from 0")
    return layer


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``force``; creates nothing."""
    if out.exists() and not out.is_dir():
        raise VitInspectError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VitInspectError(f"--out {out}: directory is not empty; pass --force to write into it")


class ModelShape(NamedTuple):
    """What the checks need to know of a model, read without building its weights."""
    depth: int
    grid: tuple[int, int]
    has_class_token: bool


def model_shape(name: str) -> ModelShape:
    """Depth, patch grid and class token of timm model ``name``, from a build on the meta device.

    Not ``weights.architecture_of``, which only strips the weights tag from a name.
    """
    import timm
    import torch

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # timm's "Unknown model"
        raise VitInspectError(f"--model {name}: {err}") from None
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed"):
        raise VitInspectError(f"--model {name}: not a timm VisionTransformer (no blocks / patch_embed)")
    grid = tuple(int(s) for s in model.patch_embed.grid_size)
    return ModelShape(len(blocks), grid, getattr(model, "cls_token", None) is not None)


def check_query_and_layer(shape: ModelShape, model_name: str, query: tuple[int, int] | None,
                          layer: int) -> None:
    """One-line errors, in command-line terms, for a query or layer the model does not have."""
    depth, (gh, gw), has_class_token = shape
    if not has_class_token:
        raise VitInspectError(f"--model {model_name} has no class token; the report's rollout follows it")
    if layer >= depth:
        raise VitInspectError(f"--layer {layer}: out of range, {model_name} has {depth} blocks (0..{depth - 1})")
    if query is not None and not (query[0] < gh and query[1] < gw):
        raise VitInspectError(f"--query {query[0]},{query[1]}: out of range, the patch grid is {gh}x{gw} "
                              f"(rows 0..{gh - 1}, columns 0..{gw - 1})")


def run_report(args: argparse.Namespace) -> None:
    query = None if args.query is None else parse_query(args.query)
    layer = parse_layer(args.layer)
    check_out_dir(args.out, args.force)
    check_query_and_layer(model_shape(args.model), args.model, query, layer)

    import matplotlib
    matplotlib.use("Agg")
    from .images import load_image
    from .report import compute_report, write_report
    from .weights import load_vit

    load_image(args.image)  # fail on a bad image before the weights are built
    model, provenance = load_vit(args.model, args.weights)
    print(f"weights: {provenance.label}")
    data = compute_report(args.image, model, provenance, query=query, layer=layer)
    figure, summary = write_report(data, args.out)
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report written: {figure}\nsummary written: {summary}")


# ---------------------------------------------------------------- distance

def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted; one-line errors otherwise."""
    if not folder.exists():
        raise VitInspectError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise VitInspectError(f"{folder}: is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise VitInspectError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def run_distance(args: argparse.Namespace) -> int:
    """Exit code: 0 if every image was read, else the number of skipped files (at most 100)."""
    paths = image_files(args.folder)
    if args.batch_size < 1:
        raise VitInspectError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.out is not None and args.out.is_dir():
        raise VitInspectError(f"--out {args.out}: is a directory; name a .json file")

    from tqdm import tqdm

    from .attention_maps import uniform_attention_distance
    from .model_info import grid_size_of, patch_size_of
    from .weights import load_vit

    model, provenance = load_vit(args.model, args.weights)
    print(f"weights: {provenance.label}")
    with tqdm(total=len(paths), unit="image", desc="attention distance", leave=False) as bar:
        distance, skipped = _distance_skipping_bad_files(model, paths, args, bar)
    grid, patch_size = grid_size_of(model), patch_size_of(model)
    result = {"model": provenance.model, "weights": provenance.as_dict(), "folder": str(args.folder),
              "num_images": len(paths) - len(skipped), "num_skipped": len(skipped), "skipped": skipped,
              "patch_size": patch_size, "grid": list(grid),
              "uniform_attention_distance": uniform_attention_distance(grid, patch_size),
              "attention_distance": distance.tolist()}
    _print_distance(distance, provenance.trained, result["uniform_attention_distance"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written: {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} of {len(paths)} files (listed above); exit code {len(skipped)}",
              file=sys.stderr)
    return min(len(skipped), MAX_EXIT_SKIPPED)


def _distance_skipping_bad_files(model: nn.Module, paths: list[Path], args: argparse.Namespace,
                                 bar: tqdm) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """(L, H) distance over the readable files, and [{file, reason}] for each skipped one.

    With ``--strict`` the first unreadable file ends the run instead.
    """
    from .attention_maps import average_attention_distance
    from .images import image_batches

    skipped: list[dict[str, str]] = []

    def skip(path: Path, error: VitInspectError) -> None:
        skipped.append({"file": str(path), "reason": str(error)})
        bar.write(f"skipped: {error}", file=sys.stderr)
        bar.update(1)

    batches = image_batches(paths, model, args.batch_size, on_error=None if args.strict else skip)
    try:
        return average_attention_distance(model, batches, bar), skipped
    except VitInspectError:
        if skipped and len(skipped) == len(paths):
            raise VitInspectError(f"{args.folder}: none of the {len(paths)} image files could be read "
                                  "(each is listed above)") from None
        raise


def _print_distance(distance, trained: bool, uniform: float) -> None:
    heading = "mean attention distance (pixels) per block over heads: mean [min, max]"
    print(heading if trained else f"UNTRAINED weights - {heading}")
    for layer, heads in enumerate(distance):
        print(f"  block {layer:2d}: {heads.mean():6.1f} [{heads.min():6.1f}, {heads.max():6.1f}]")
    print(f"  (uniform attention over the patches would give {uniform:.1f})")


# ---------------------------------------------------------------- download

def run_download(args: argparse.Namespace) -> None:
    from .hub import download_weights, hub_reachable, hub_unreachable_reason
    from .weights import WEIGHTS_ENV

    if not hub_reachable():
        raise VitInspectError(f"cannot download: {hub_unreachable_reason()}; run this where there is network")
    path = download_weights(args.model, args.to)
    print(f"downloaded {args.model}\nuse it with {weights_argument(str(path))}, "
          f"or export {WEIGHTS_ENV}={path}")


# ---------------------------------------------------------------- train

def parse_count(option: str, text: str | None, smallest: int) -> int | None:
    """An integer option's value (None stays None); a one-line error below ``smallest`` or if not an integer."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise VitInspectError(f"{option} {text}: expected an integer") from None
    if value < smallest:
        raise VitInspectError(f"{option} {text}: must be at least {smallest}")
    return value


def check_dataset(dataset: str) -> None:
    """A dataset name, or an existing folder; a one-line error otherwise."""
    if dataset in DATASETS or Path(dataset).is_dir():
        return
    where = "is a file, not a folder" if Path(dataset).exists() else "no such folder"
    raise VitInspectError(f"--dataset {dataset}: not one of {', '.join(DATASETS)}, and {where}")


def train_out(dataset: str, out: Path | None, force: bool) -> Path:
    """The --out file (default ``vit_DATASET.safetensors``); refuses to overwrite without ``force``."""
    if out is None:
        out = Path(f"vit_{Path(dataset).name or 'folder'}.safetensors")
    check_out_file(out, ".safetensors", "--out", force)
    return out


def check_out_file(out: Path, suffix: str, option: str, force: bool) -> None:
    """Refuse a folder, another suffix, or an existing file unless ``force``; creates nothing."""
    kind = suffix.lstrip(".")
    if out.is_dir():
        raise VitInspectError(f"{option} {out}: is a directory; name a {suffix} file")
    if out.suffix != suffix:
        raise VitInspectError(f"{option} {out}: written as {kind}; name a {suffix} file")
    if out.exists() and not force:
        raise VitInspectError(f"{option} {out}: exists; pass --force to overwrite it")


def run_train(args: argparse.Namespace) -> None:
    check_dataset(args.dataset)
    epochs = parse_count("--epochs", args.epochs, 1)
    seed = parse_count("--seed", args.seed, 0)
    out = train_out(args.dataset, args.out, args.force)
    if args.ablations is not None:
        check_out_file(args.ablations, ".json", "--ablations", args.force)

    import dataclasses

    import torch

    from . import training

    data = training.load_dataset(args.dataset, root=args.data_dir)
    config = dataclasses.replace(training.TrainConfig(), seed=seed, **({"epochs": epochs} if epochs else {}))
    spec = dataclasses.replace(training.ViTSpec(), num_classes=len(data.class_names))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{data.name}: {len(data.train_labels)} training and {len(data.test_labels)} test images, "
          f"{len(data.class_names)} classes ({data.split}); {spec.name} on {device}, {config.epochs} epochs")
    model = training.build_vit(spec, seed)
    history = training.train_vit(model, data, config, device=device)
    accuracy = float(history["test_accuracy"][-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    training.save_trained(model, out, data, config, accuracy)
    print(f"test accuracy {accuracy:.2%} on {len(data.test_labels)} held-out images")
    _compare_with_shipped(args.dataset, accuracy, config)
    print(f"weights written: {out}\nload them with load_vit(weights={str(out)!r})")
    if args.ablations is not None:
        print(f"ablations: each variant with the short recipe ({training.ABLATION_RECIPE.epochs} epochs)")
        table = training.AblationTable(
            training.run_ablations(data, spec, training.ABLATION_RECIPE, training.ABLATION_SEEDS),
            training.ABLATION_SEEDS, training.ABLATION_RECIPE, data.name)
        args.ablations.parent.mkdir(parents=True, exist_ok=True)
        print(f"ablation table written: {training.save_ablations(table, args.ablations)}")


def _compare_with_shipped(dataset: str, accuracy: float, config) -> None:
    """After training on a dataset whose weights ship, say how far this run is from them."""
    from dataclasses import asdict

    from .small_vit import shipped_weights, training_metadata

    try:
        shipped = training_metadata(shipped_weights(dataset))
    except VitInspectError:  # not shipped for this dataset, or the file is missing
        return
    same = "the same recipe" if shipped["train_config"] == asdict(config) else "another recipe"
    print(f"the shipped weights ({same}) have {shipped['test_accuracy']:.2%}: this run is "
          f"{100 * (accuracy - shipped['test_accuracy']):+.1f} points from them")


# ---------------------------------------------------------------- finetune

FINE_TUNE_MODES = ("probe", "full")  # fine_tuning.MODES, without importing torch


def check_mode(mode: str) -> None:
    if mode not in FINE_TUNE_MODES:
        raise VitInspectError(f"--mode {mode}: unknown; use one of {', '.join(FINE_TUNE_MODES)}")


def check_finetune_dataset(dataset: str) -> None:
    """digits, or an existing folder; a one-line error otherwise."""
    if dataset == "digits" or Path(dataset).is_dir():
        return
    where = "is a file, not a folder" if Path(dataset).exists() else "no such folder"
    raise VitInspectError(f"--dataset {dataset}: not digits, and {where} (expected one sub-folder of images per class)")


def run_finetune(args: argparse.Namespace) -> None:
    check_finetune_dataset(args.dataset)
    check_mode(args.mode)
    per_class = parse_count("--labels-per-class", args.labels_per_class, 1)
    epochs, seed = parse_count("--epochs", args.epochs, 1), parse_count("--seed", args.seed, 0)
    out = args.out or Path(f"finetuned_{Path(args.dataset).name or 'folder'}.safetensors")
    check_out_file(out, ".safetensors", "--out", args.force)

    from . import fine_tuning
    from .weights import load_vit

    model = load_vit(args.model, weights=args.weights).model
    data, images, labels = fine_tuning.chosen_training_images(args.dataset, model, per_class, seed)
    epochs = epochs or fine_tuning.epochs_for(len(labels))
    print(f"{data.name}: {len(labels)} training images ({per_class or 'all'} per class, {len(data.class_names)} "
          f"classes), {len(data.test_labels)} held out; {args.mode} for {epochs} epochs")
    tuned = fine_tuning.fine_tune(model, images, labels, mode=args.mode, epochs=epochs, seed=seed,
                                  held_out=(data.test_images, data.test_labels), progress=True)
    accuracy = float(tuned.history["test_accuracy"][-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    fine_tuning.save_fine_tuned(tuned.model, out, data, accuracy, args.mode)
    print(f"test accuracy {accuracy:.2%} on {len(data.test_labels)} held-out images\nweights written: {out}")


# ---------------------------------------------------------------- check

def check_notebook_argument(path: Path) -> None:
    """One-line errors for a path that cannot be a notebook; reads nothing heavy."""
    if not path.exists():
        raise VitInspectError(f"{path}: no such file")
    if path.is_dir():
        raise VitInspectError(f"{path}: is a directory, not a notebook")
    if path.suffix != ".ipynb":
        raise VitInspectError(f"{path}: not a notebook (expected a .ipynb file)")


def run_check(args: argparse.Namespace) -> int:
    check_notebook_argument(args.notebook)
    if args.timeout < 1:
        raise VitInspectError(f"--timeout {args.timeout}: must be at least 1 second")
    from .homework import check_notebook, format_report, read_homework

    read_homework(args.notebook)  # a bad file fails here, before a kernel starts
    print(f"running {args.notebook} in a fresh kernel, offline...", file=sys.stderr)
    report = check_notebook(args.notebook, args.timeout)
    print(format_report(report))
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        with command_line_messages():  # messages say `--weights PATH`, not `weights="PATH"`
            return args.run(args) or 0
    except VitInspectError as err:
        print(f"vit-inspect: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vit-inspect: interrupted", file=sys.stderr)
        return 130
