"""``vit-inspect`` command line: report, download."""
from __future__ import annotations

import argparse
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
    report.set_defaults(run=run_report)

    download = commands.add_parser("download", help="fetch pretrained weights for offline use")
    download.add_argument("--model", default=DEFAULT_MODEL)
    download.add_argument("--to", type=Path, default=None, help="folder (default: the Hugging Face cache)")
    download.set_defaults(run=run_download)
    return parser


def run_report(args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from .images import load_image
    from .report import compute_report, prepare_out_dir, write_report
    from .weights import load_vit

    load_image(args.image)  # fail on a bad image before the model is built
    prepare_out_dir(args.out, args.force)
    model, provenance = load_vit(args.model, args.weights)
    print(f"weights: {provenance.label}")
    figure, summary = write_report(compute_report(args.image, model, provenance), args.out)
    print(f"report written: {figure}\nsummary written: {summary}")


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
