"""Notebook 06_attention_maps: the paper's attention analyses from captured attention weights.

Attention rollout (Abnar & Zuidema 2020; ViT paper Fig. 6) and mean attention
distance (ViT paper Fig. 7 right), batched and vectorised, from the (B, L, H, N, N)
attention that ``recorder.capture`` returns. Both are also available streamed
(:class:`StreamedRollout`, :class:`StreamedDistance`, :func:`analyse_attention`):
computed layer by layer inside the forward pass, so no (B, L, H, N, N) tensor is ever
stored - what a folder of images needs (:func:`average_attention_distance`).
A sanity check for the maps: how much of a rollout map the mere brightness of the
patches explains (:func:`patch_brightness`, :func:`map_vs_brightness`), against a chance
level that keeps the maps' spatial structure (:func:`spatial_null_correlations`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from .errors import VitInspectError
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of, tokens_to_grid
from .recorder import capture

if TYPE_CHECKING:
    from tqdm import tqdm

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(..., H, N, N) -> (..., N, N): mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(dim=-3)
    if head_fusion == "max":
        return attention.amax(dim=-3)
    if head_fusion == "min":
        return attention.amin(dim=-3)
    raise VitInspectError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the ``discard_ratio`` fraction of smallest entries of each (N, N) map.

    (..., N, N) -> (..., N, N), one map per image and layer; the input itself is never modified.
    """
    N = fused.shape[-1]
    count = int(N * N * discard_ratio)
    if count == 0:
        return fused
    flat = fused.reshape(-1, N * N).clone()  # (M, N*N)
    lowest = flat.topk(count, dim=-1, largest=False).indices  # (M, count)
    return flat.scatter_(-1, lowest, 0.0).view(fused.shape)  # (..., N, N)


def _check_rollout_options(head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise VitInspectError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise VitInspectError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def rollout_layer(attention: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """One layer's factor of the rollout: (..., H, N, N) -> (..., N, N).

    Heads fused, the weakest links optionally discarded, the identity added for the
    residual connection, each row renormalised to sum to 1.
    """
    mixed = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)  # (..., N, N), a new tensor
    mixed.diagonal(dim1=-2, dim2=-1).add_(1.0)  # + identity, in place: no second (..., N, N)
    return mixed.div_(mixed.sum(dim=-1, keepdim=True))


def attention_rollout(attention: torch.Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout of (B, L, H, N, N) captured attention -> (B, N, N).

    At every layer: fuse the heads, optionally discard the weakest links, add the
    identity for the residual connection and renormalise each row to sum to 1; then
    multiply the layers, later layers on the left: R = A_L ... A_1. Row i of R says how
    much output token i draws on each input token.
    """
    _check_rollout_options(head_fusion, discard_ratio)
    L = attention.shape[1]
    mixed = rollout_layer(attention, head_fusion, discard_ratio)  # (B, L, N, N)
    rollout = mixed[:, 0]  # (B, N, N)
    for layer in range(1, L):
        rollout = mixed[:, layer] @ rollout  # (B, N, N)
    return rollout


def rollout_to_grid(rollout: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                    query: int = 0) -> torch.Tensor:
    """Row ``query`` of (B, N, N) rollout (default the class token) over the patch tokens -> (B, gh, gw)."""
    return tokens_to_grid(rollout[:, query], grid, num_prefix_tokens)  # (B, gh, gw)


def patch_brightness(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean brightness of every patch of (B, C, H, W) pixels in [0, 1] (all channels alike): (B, gh, gw).

    Laid out like the patch tokens, so it compares cell by cell with a rollout map.
    """
    B, C, H, W = pixels.shape
    p = patch_size
    patches = pixels.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
    return patches.mean(dim=(1, 3, 5))  # (B, gh, gw)


def map_correlation(maps: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two (..., B, gh, gw) maps over their cells, one per map: (..., B).

    +1: one map is an increasing linear function of the other; 0: no linear relation.
    Leading dimensions (e.g. randomisation steps) broadcast against ``other``.
    """
    a = maps.flatten(-2) - maps.flatten(-2).mean(dim=-1, keepdim=True)  # (..., B, gh*gw)
    b = other.flatten(-2) - other.flatten(-2).mean(dim=-1, keepdim=True)  # (B, gh*gw)
    return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(torch.finfo(a.dtype).tiny)


def bright_ratio(maps: torch.Tensor, brightness: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Mean map value on bright patches / on dark ones, per image: (..., B, gh, gw), (B, gh, gw) -> (..., B).

    A patch is bright when its brightness (in [0, 1]) is above ``threshold``: on the digits
    of notebook 09, the ink. Above 1: the map favours the bright patches. An image with no
    bright or no dark patch gives NaN.
    """
    bright = brightness > threshold  # (B, gh, gw)
    bright_mean = (maps * bright).flatten(-2).sum(-1) / bright.flatten(-2).sum(-1)  # (..., B)
    dark_mean = (maps * ~bright).flatten(-2).sum(-1) / (~bright).flatten(-2).sum(-1)  # (..., B)
    return bright_mean / dark_mean


def map_vs_brightness(maps: torch.Tensor, brightness: torch.Tensor,
                      threshold: float = 0.25) -> dict[str, torch.Tensor]:
    """How much of a map the brightness of the patches explains, in the two measures notebooks 06 and 09 print.

    ``{"r": Pearson's r over the cells, "bright_ratio": mean on bright / on dark patches}``,
    each (..., B) for maps (..., B, gh, gw) and brightness (B, gh, gw). Both are near 0 and
    1 for a map unrelated to brightness; they can disagree (r sees any linear trend, the
    ratio only the split at ``threshold``).
    """
    return {"r": map_correlation(maps, brightness), "bright_ratio": bright_ratio(maps, brightness, threshold)}


def spatial_null_correlations(maps: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """r of each map with ``other`` maps that keep their spatial structure, not the pairing: (B, 3 + B - 1).

    Neighbouring patches are alike in both maps, so r between UNRELATED smooth maps
    spreads far wider than the +-1/sqrt(cells) that independent cells would give. Column
    0-2: map i against ``other[i]`` flipped upside down, left-right, and both (turned
    by 180 degrees); then map i against every other image's ``other[j]``, j != i. The
    spread of these values is the chance level a real r must beat.
    """
    B = maps.shape[0]
    flips = [other.flip(-2), other.flip(-1), other.flip(-2, -1)]  # 3 x (B, gh, gw)
    flipped = torch.stack([map_correlation(maps, f) for f in flips], dim=1)  # (B, 3)
    pairs = map_correlation(maps[:, None], other[None])  # (B, B): map i against other j
    others = pairs[~torch.eye(B, dtype=torch.bool)].reshape(B, B - 1)  # (B, B - 1), j != i
    return torch.cat([flipped, others], dim=1)  # (B, 3 + B - 1)


def grid_argmax(maps: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) -> (B, 2): [row, col] of each map's largest cell."""
    B, gh, gw = maps.shape
    flat = maps.reshape(B, gh * gw).argmax(dim=-1)  # (B,)
    return torch.stack([flat // gw, flat % gw], dim=-1)  # (B, 2)


def patch_centres(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(P, 2) pixel coordinates (y, x) of the patch centres, row-major like the tokens."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # (gh, gw)
    centres = torch.stack([rows, cols], dim=-1).reshape(gh * gw, 2)  # (P, 2)
    return (centres.double() + 0.5) * patch_size


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(P, P) Euclidean distance in pixels between every pair of patch centres."""
    centres = patch_centres(grid, patch_size)  # (P, 2)
    return torch.cdist(centres, centres)  # (P, P)


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                            patch_size: int) -> torch.Tensor:
    """Attention-weighted pixel distance between query and key patches: (..., H, N, N) -> (..., H).

    Typically (B, L, H, N, N) -> (B, L, H). Prefix tokens (class, distillation,
    registers) have no place on the image, so they are dropped both as queries and as
    keys, and each patch query's attention is renormalised over the patch keys before
    weighting the distances; the result is the mean over the patch queries.
    """
    distances = patch_distances(grid, patch_size).to(attention.device, attention.dtype)  # (P, P)
    if attention.shape[-1] != num_prefix_tokens + distances.shape[-1]:
        raise VitInspectError(f"{attention.shape[-1]} tokens do not match {num_prefix_tokens} prefix + "
                              f"{grid[0]}x{grid[1]} patches")
    return weighted_distance(attention, distances, num_prefix_tokens)


def weighted_distance(attention: torch.Tensor, distances: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """(..., H, N, N) attention and (P, P) patch distances -> (..., H) mean attention distance.

    One slice of the first dimension at a time: the products of a whole batch would be a
    temporary as large as the attention (a fresh 15 MB for ViT-B at batch 8, every layer).
    """
    p = num_prefix_tokens
    per_slice = []
    for chunk in attention.split(1):
        patch_attention = chunk[..., p:, p:]  # (1, ..., P, P), a view: no copy
        weighted = torch.linalg.vecdot(patch_attention, distances)  # (1, ..., P)
        mass = patch_attention.sum(dim=-1).clamp_min(torch.finfo(attention.dtype).tiny)  # (1, ..., P)
        per_slice.append((weighted / mass).mean(dim=-1))  # (1, ...)
    return torch.cat(per_slice)


def uniform_attention_distance(grid: tuple[int, int], patch_size: int) -> float:
    """Mean attention distance of uniform attention: the mean distance over all patch pairs.

    The level that random (untrained) weights give at every layer.
    """
    return float(patch_distances(grid, patch_size).mean())


def reusable(buffer: torch.Tensor | None, batch: int, tokens: int) -> torch.Tensor | None:
    """The leading ``batch`` rows of an earlier (B, L, H, N, N) output if they fit, else None.

    Streaming loops that keep the whole attention write every batch into the first batch's
    output: a fresh output would pay a page fault per 4 KiB again and again.
    """
    if buffer is None or batch > buffer.shape[0] or buffer.shape[-1] != tokens:
        return None
    return buffer[:batch]


# ---------------------------------------------------------------- streamed, layer by layer


class StreamedRollout:
    """:func:`attention_rollout` accumulated inside the forward pass, one layer at a time.

    A :class:`~vit_inspect.recorder.LayerAnalysis` for ``capture(..., analyses=...)``:
    holds one (B, N, N) product instead of the (B, L, H, N, N) attention.
    """

    def __init__(self, head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        _check_rollout_options(head_fusion, discard_ratio)
        self.head_fusion, self.discard_ratio = head_fusion, discard_ratio
        self.rollout: torch.Tensor | None = None
        self.layers_seen = 0

    def update(self, slot: int, attention: torch.Tensor) -> None:
        """Multiply layer ``slot``'s (B, H, N, N) attention in, on the left (later layers left)."""
        if slot != self.layers_seen:
            raise VitInspectError(f"rollout needs the layers in forward order: got slot {slot} "
                                  f"after {self.layers_seen} layers")
        mixed = rollout_layer(attention, self.head_fusion, self.discard_ratio)  # (B, N, N)
        self.rollout = mixed if self.rollout is None else mixed @ self.rollout  # (B, N, N)
        self.layers_seen += 1

    def result(self) -> torch.Tensor:
        """(B, N, N), as :func:`attention_rollout` gives for the same layers."""
        if self.rollout is None:
            raise VitInspectError("no layer was seen")
        return self.rollout


class StreamedDistance:
    """:func:`mean_attention_distance` of each layer, computed as the forward pass reaches it.

    A :class:`~vit_inspect.recorder.LayerAnalysis`: keeps (B, H) per layer, result (B, L, H).
    """

    def __init__(self, grid: tuple[int, int], num_prefix_tokens: int, patch_size: int) -> None:
        self.distances = patch_distances(grid, patch_size)  # (P, P), float64 until the first layer
        self.grid, self.num_prefix_tokens = grid, num_prefix_tokens
        self.per_layer: dict[int, torch.Tensor] = {}

    def update(self, slot: int, attention: torch.Tensor) -> None:
        """Layer ``slot``'s (B, H, N, N) attention -> its (B, H) distances."""
        if self.distances.dtype != attention.dtype or self.distances.device != attention.device:
            self.distances = self.distances.to(attention.device, attention.dtype)
        if attention.shape[-1] != self.num_prefix_tokens + self.distances.shape[-1]:
            raise VitInspectError(f"{attention.shape[-1]} tokens do not match {self.num_prefix_tokens} "
                                  f"prefix + {self.grid[0]}x{self.grid[1]} patches")
        self.per_layer[slot] = weighted_distance(attention, self.distances, self.num_prefix_tokens)  # (B, H)

    def result(self) -> torch.Tensor:
        """(B, L, H) pixels, layers in the order of the chosen slots."""
        if not self.per_layer:
            raise VitInspectError("no layer was seen")
        return torch.stack([self.per_layer[slot] for slot in sorted(self.per_layer)], dim=1)  # (B, L, H)


def analyse_attention(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0, keep_attention: bool = False) -> dict[str, torch.Tensor]:
    """One forward pass of ``images`` (B, 3, H, W) with rollout and distance computed inside it.

    Returns ``{"logits": (B, C), "rollout": (B, N, N), "attention_distance": (B, L, H)}``,
    equal to :func:`attention_rollout` and :func:`mean_attention_distance` of ``capture``'s
    attention; the (B, L, H, N, N) attention itself is stored (``"attention"``) only with
    ``keep_attention=True``.
    """
    grid = grid_size_of(model, images)
    analyses = {"rollout": StreamedRollout(head_fusion, discard_ratio),
                "attention_distance": StreamedDistance(grid, num_prefix_tokens_of(model), patch_size_of(model))}
    return capture(model, images, analyses=analyses, keep_attention=keep_attention)


def average_attention_distance(model: nn.Module, batches: Iterable[torch.Tensor],
                               progress: tqdm | None = None) -> torch.Tensor:
    """Mean attention distance per layer and head over all images of ``batches``: (L, H).

    Streams: each layer's distances are taken inside the forward pass, so no batch's
    (B, L, H, N, N) attention is ever stored. ``progress`` (a tqdm bar) is advanced by
    the number of images in each batch.
    """
    total, count = None, 0
    for images in batches:
        analysis = StreamedDistance(grid_size_of(model, images), num_prefix_tokens_of(model), patch_size_of(model))
        distance = capture(model, images, analyses={"distance": analysis}, keep_attention=False)["distance"]
        total = distance.sum(dim=0) if total is None else total + distance.sum(dim=0)  # (L, H)
        count += images.shape[0]
        if progress is not None:
            progress.update(images.shape[0])
    if total is None:
        raise VitInspectError("no images to average over")
    return total / count
