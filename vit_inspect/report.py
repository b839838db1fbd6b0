"""The CLI's main job: one image through one model, a figure and a JSON summary."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from .errors import VitInspectError
from .images import preprocess
from .labels import top_k
from .model_info import patch_size_of
from .plotting import new_axes, plot_patch_overlay, plot_top_k, untrained_title
from .weights import Provenance

REPORT_FIGURE = "report.png"
REPORT_SUMMARY = "summary.json"


@dataclass
class ReportData:
    """Everything the report shows, computed once."""
    image: str
    provenance: Provenance
    preprocessed: object
    patch_size: int
    logits: torch.Tensor                      # (1, num_classes)
    extra: dict = field(default_factory=dict)  # further analyses, keyed by name


@torch.inference_mode()
def compute_report(image: str | Path, model: nn.Module, provenance: Provenance) -> ReportData:
    """Run the model once on ``image`` and gather what the report draws."""
    pre = preprocess(image, model)
    logits = model(pre.tensor)  # (1, C)
    return ReportData(str(image), provenance, pre, patch_size_of(model), logits)


def summarize(data: ReportData) -> dict:
    """JSON-ready summary: model, weights provenance, input size, top-5."""
    return {
        "model": data.provenance.model,
        "weights": data.provenance.as_dict(),
        "image": data.image,
        "input_size": list(data.preprocessed.tensor.shape[1:]),
        "top5": top_k(data.logits, k=5).rows(0),
    }


def plot_report(data: ReportData) -> Figure:
    """The crop with its patch grid beside the top-5 bar chart."""
    trained = data.provenance.trained
    fig, axes = new_axes(1, 2, size=5.0)
    plot_patch_overlay(data.preprocessed.crop, data.patch_size, ax=axes[0, 0])
    plot_top_k(top_k(data.logits), ax=axes[0, 1], title=untrained_title("top-5 classes", trained))
    fig.suptitle(f"{Path(data.image).name} - {data.provenance.label}")
    return fig


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create ``out``; refuse to write into a non-empty folder unless ``force``."""
    if out.exists() and not out.is_dir():
        raise VitInspectError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VitInspectError(f"--out {out}: directory is not empty; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write report.png and summary.json into ``out``; return both paths."""
    figure_path, summary_path = out / REPORT_FIGURE, out / REPORT_SUMMARY
    plot_report(data).savefig(figure_path, dpi=110)
    summary_path.write_text(json.dumps(summarize(data), indent=2) + "\n")
    return figure_path, summary_path
