"""The router: ``load_vit`` finds a model's weights and says where they came from.

Routes: a local file (``.safetensors`` preferred, ``.pth``/``.bin`` read with
``weights_only=True``), the Hugging Face cache, a download, or seeded random
weights. ``weights="auto"`` tries them in that order and falls back to random
weights with a banner, never silently. A file of the small ViT trained here (or its
shipped name, "digits") rebuilds its own architecture.

The pieces live by question: weight files, ``Provenance`` and untrained init in
:mod:`vit_inspect.provenance`; the hub (cache, proxies, download) in
:mod:`vit_inspect.hub`; the small ViT's spec and file format in
:mod:`vit_inspect.small_vit`. Their public names stay importable from here.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# The names below that this module does not use are re-exported: importable from here as before the split.
from .errors import WeightsError, weights_argument
from .hub import (DEFAULT_PORTS, HUB_FILENAMES, OFFLINE_ENV, PROBE_TIMEOUT_S, PROXY_FAILURES, TRUE_VALUES,
                  download_weights, find_in_hub_cache, hub_endpoint, hub_offline, hub_reachable, hub_repo_id,
                  hub_unreachable_reason, proxy_for)
from .model_info import DEFAULT_MODEL
from .provenance import (BIAS_STD, NORM_GAMMA_RANGE, POS_EMBED_STD, TOKEN_STD, UNTRAINED_METADATA_KEY, LoadedViT,
                         Provenance, architecture_of, create_untrained, current_umask, load_weights_file,
                         ordinary_permissions, randomise_constant_init, read_state_dict, save_weights,
                         saved_as_trained, state_dict_mismatch)
from .small_vit import load_trained, trained_here_path

WEIGHTS_ENV = "VIT_INSPECT_WEIGHTS"
KEYWORDS = ("auto", "pretrained", "random")


def load_vit(name: str = DEFAULT_MODEL, weights: str | os.PathLike = "auto",
             seed: int = 0, verbose: bool = True) -> LoadedViT:
    """Create timm model ``name`` in eval mode with weights from ``weights``.

    ``weights``: "auto" | "pretrained" | "random" | "digits" (the small ViT trained here,
    shipped in data/) | a local file path (``~`` expanded; a folder holding
    ``model.safetensors`` stands for that file). A file saved by ``vit-inspect train``
    names its own architecture in its header, which then replaces ``name``.
    Returns ``(model, provenance)``.
    """
    trained_here = trained_here_path(weights)
    if trained_here is not None:
        return load_trained(trained_here, "local file" if trained_here == Path(weights) else "shipped")
    from_env = weights == "auto" and bool(os.environ.get(WEIGHTS_ENV))
    with _named_by_env(from_env):
        if isinstance(weights, str) and weights in KEYWORDS:
            path, source = _resolve_keyword(name, weights)
        else:
            path, source = weights_file_path(weights), "local file"
        if path is not None and trained_here_path(path) is not None:  # e.g. VIT_INSPECT_WEIGHTS names one
            return load_trained(path, source)
    model = create_untrained(name, seed)  # built once, after the file has been found
    if path is None:
        if weights == "auto" and verbose:
            print(untrained_banner(name, seed), file=sys.stderr)
        return LoadedViT(model.eval(), Provenance(name, "random", False, None, seed))
    with _named_by_env(from_env):
        load_weights_file(model, path)
    marker = saved_as_trained(path)
    return LoadedViT(model.eval(), Provenance(name, source, marker is not False, str(path),
                                              training_known=source != "local file" or marker is not None))


@contextmanager
def _named_by_env(from_env: bool) -> Iterator[None]:
    """Prefix a weights error with the variable that chose the file, when it did."""
    try:
        yield
    except WeightsError as err:
        if from_env:
            raise WeightsError(f"{WEIGHTS_ENV}={os.environ[WEIGHTS_ENV]}: {err}") from None
        raise


def _resolve_keyword(name: str, weights: str) -> tuple[Path | None, str]:
    if weights == "random":
        return None, "random"
    if weights == "auto" and os.environ.get(WEIGHTS_ENV):
        return weights_file_path(os.environ[WEIGHTS_ENV]), "local file"
    cached = find_in_hub_cache(name)
    if cached is not None:
        return cached, "hub cache"
    if hub_reachable():
        return download_weights(name), "hub download"
    if weights == "auto":
        return None, "random"
    raise WeightsError(
        f"pretrained weights for {name} are not in the Hugging Face cache and {hub_unreachable_reason()}; "
        f"on a machine with network run `vit-inspect download --model {name} --to DIR` and pass "
        f"{weights_argument('DIR/model.safetensors')} (or set {WEIGHTS_ENV}=DIR)")


def weights_file_path(weights: str | os.PathLike) -> Path:
    """The weights file that ``weights`` names: ``~`` expanded, a folder replaced by the
    ``model.safetensors`` (or ``pytorch_model.bin``) inside it, as ``vit-inspect download --to`` writes."""
    path = Path(weights).expanduser()
    if not path.is_dir():
        return path
    for filename in HUB_FILENAMES:
        if (path / filename).is_file():
            return path / filename
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".bin"))
    hint = f" (it holds {', '.join(found)}: name one of them)" if found else ""
    raise WeightsError(f"{path} is a folder without {' or '.join(HUB_FILENAMES)}{hint}")


def untrained_banner(name: str, seed: int) -> str:
    bar = "!" * 78
    return "\n".join([
        bar,
        f"!! UNTRAINED WEIGHTS (random init, seed {seed}) - architecture {architecture_of(name)}.",
        f"!! No local file, no Hugging Face cache, and {hub_unreachable_reason()}.",
        "!! Predictions, attention maps and embeddings from this model mean NOTHING.",
        "!! Real weights: `vit-inspect download --to DIR` where there is network, then",
        f"!! {weights_argument('DIR/model.safetensors')} or {WEIGHTS_ENV}=DIR.",
        bar,
    ])
