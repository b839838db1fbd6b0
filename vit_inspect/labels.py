"""ImageNet class names (timm's ImageNetInfo, shipped offline) and top-k predictions."""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
from timm.data import ImageNetInfo

IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_info() -> ImageNetInfo:
    return ImageNetInfo("imagenet-1k")


def class_name(index: int) -> str:
    """Human-readable ImageNet-1k name, e.g. 538 -> 'dome'."""
    return imagenet_info().index_to_description(int(index))


class TopK(NamedTuple):
    indices: torch.Tensor     # (B, k)
    probs: torch.Tensor       # (B, k), softmax probabilities
    names: list[list[str]]    # B lists of k names

    def rows(self, image: int = 0) -> list[dict]:
        """JSON-ready predictions for one image: index, label, probability."""
        return [{"index": int(i), "label": name, "probability": float(p)}
                for i, p, name in zip(self.indices[image], self.probs[image], self.names[image])]


def top_k(logits: torch.Tensor, k: int = 5) -> TopK:
    """Top-k classes of ``logits`` (C,) or (B, C) with their names and probabilities.

    ImageNet names for a 1000-class head; any other head (e.g. the digits model trained
    here) gets its class index as the name, never an ImageNet name that does not apply.
    """
    logits = logits.detach().reshape(-1, logits.shape[-1])  # (B, C)
    probs, indices = logits.softmax(dim=-1).topk(k, dim=-1)  # (B, k)
    imagenet = logits.shape[-1] == IMAGENET_CLASSES
    names = [[class_name(i) if imagenet else str(i) for i in row] for row in indices.tolist()]
    return TopK(indices, probs, names)
