"""``vit-inspect`` command line: report, distance, download."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import VitInspectError
from .weights import DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-inspect", description="Look inside a timm Vision Transformer.")
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="figure + summary.json for one image")
    report.add_argument("image", type=Path)
    report.add_argument("--out", type=Path, required=True, help="output folder")
    report.add_argument("--model", default=DEFAULT_MODEL, help="timm model name (default: %(default)s)")
    report.add_argument("--weights", default="auto", help="auto | random | pretrained | PATH (default: auto)")
    report.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    report.add_argument("--query", default=None, metavar="ROW,COL",
                        help="patch whose per-head attention is drawn (default: the centre patch)")
    report.add_argument("--layer", type=int, default=0, metavar="L",
                        help="block index for the per-head attention, 0 = first (default: 0)")
    report.set_defaults(run=run_report)

    distance = commands.add_parser("distance", help="mean attention distance over a folder of images")
    distance.add_argument("folder", type=Path, help="folder of images (.png, .jpg, ...; not recursive)")
    distance.add_argument("--out", type=Path, default=None, help="write the result as JSON to this file")
    distance.add_argument("--model", default=DEFAULT_MODEL, help="timm model name (default: %(default)s)")
    distance.add_argument("--weights", default="auto", help="auto | random | pretrained | PATH (default: auto)")
    distance.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    distance.set_defaults(run=run_distance)

    download = commands.add_parser("download", help="fetch pretrained weights for offline use")
    download.add_argument("--model", default=DEFAULT_MODEL)
    download.add_argument("--to", type=Path, default=None, help="folder (default: the Hugging Face cache)")
    download.set_defaults(run=run_download)
    return parser


def run_report(args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from .images import load_image
    from .report import check_out_dir, compute_report, parse_query, prepare_out_dir, write_report
    from .weights import load_vit

    query = None if args.query is None else parse_query(args.query)
    load_image(args.image)  # fail on a bad image before the model is built
    check_out_dir(args.out, args.force)
    model, provenance = load_vit(args.model, args.weights)
    print(f"weights: {provenance.label}")
    data = compute_report(args.image, model, provenance, query=query, layer=args.layer)
    prepare_out_dir(args.out, args.force)
    figure, summary = write_report(data, args.out)
    print(f"report written: {figure}\nsummary written: {summary}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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


def run_distance(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .analysis import average_attention_distance, image_batches, uniform_attention_distance
    from .model_info import grid_size_of, patch_size_of
    from .weights import load_vit

    paths = image_files(args.folder)
    if args.batch_size < 1:
        raise VitInspectError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.out is not None and args.out.is_dir():
        raise VitInspectError(f"--out {args.out}: is a directory; name a .json file")
    model, provenance = load_vit(args.model, args.weights)
    print(f"weights: {provenance.label}")
    with tqdm(total=len(paths), unit="image", desc="attention distance", leave=False) as bar:
        distance = average_attention_distance(model, image_batches(paths, model, args.batch_size), bar)
    grid, patch_size = grid_size_of(model), patch_size_of(model)
    result = {"model": provenance.model, "weights": provenance.as_dict(), "folder": str(args.folder),
              "num_images": len(paths), "patch_size": patch_size, "grid": list(grid),
              "uniform_attention_distance": uniform_attention_distance(grid, patch_size),
              "attention_distance": distance.tolist()}
    _print_distance(distance, provenance.trained, result["uniform_attention_distance"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written: {args.out}")


def _print_distance(distance, trained: bool, uniform: float) -> None:
    heading = "mean attention distance (pixels) per block over heads: mean [min, max]"
    print(heading if trained else f"UNTRAINED weights - {heading}")
    for layer, heads in enumerate(distance):
        print(f"  block {layer:2d}: {heads.mean():6.1f} [{heads.min():6.1f}, {heads.max():6.1f}]")
    print(f"  (uniform attention over the patches would give {uniform:.1f})")


def run_download(args: argparse.Namespace) -> None:
    from .weights import download_weights, hub_reachable

    if not hub_reachable():
        raise VitInspectError("cannot reach the Hugging Face hub; run this where there is network")
    path = download_weights(args.model, args.to)
    print(f"downloaded {args.model}\npass this as weights=: {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except VitInspectError as err:
        print(f"vit-inspect: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vit-inspect: interrupted", file=sys.stderr)
        return 130
    return 0
