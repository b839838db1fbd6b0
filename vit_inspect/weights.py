"""Model loading with an explicit record of where the weights came from.

Routes: a local file (``.safetensors`` preferred, ``.pth``/``.bin`` read with
``weights_only=True``), the Hugging Face cache, a download, or seeded random
weights. ``weights="auto"`` tries them in that order and falls back to random
weights with a banner, never silently.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from .errors import WeightsError
from .model_info import DEFAULT_MODEL


WEIGHTS_ENV = "VIT_INSPECT_WEIGHTS"
UNTRAINED_METADATA_KEY = "vit_inspect_untrained"
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0
KEYWORDS = ("auto", "pretrained", "random")


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from.

    ``source`` is one of "local file", "hub cache", "hub download", "random", "shipped".
    ``trained_on``: what a file saved by ``vit-inspect train`` says it was trained on.
    """

    model: str
    source: str
    trained: bool
    path: str | None = None
    seed: int | None = None
    trained_on: str | None = None

    @property
    def label(self) -> str:
        """Short text for figure titles and printed predictions."""
        if self.trained and self.trained_on:
            return f"{self.model} trained here on {self.trained_on} ({self.source})"
        if not self.trained:
            seed = f", seed {self.seed}" if self.seed is not None else ""
            return f"UNTRAINED ({self.source}{seed}) {self.model}"
        return f"{self.model} ({self.source})"

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


class LoadedViT(NamedTuple):
    model: nn.Module
    provenance: Provenance


def load_vit(name: str = DEFAULT_MODEL, weights: str | os.PathLike = "auto",
             seed: int = 0, verbose: bool = True) -> LoadedViT:
    """Create timm model ``name`` in eval mode with weights from ``weights``.

    ``weights``: "auto" | "pretrained" | "random" | "digits" (the small ViT trained here,
    shipped in data/) | a local file path. A file saved by ``vit-inspect train`` names
    its own architecture in its header, which then replaces ``name``.
    Returns ``(model, provenance)``.
    """
    from .training import load_trained, trained_here_path  # the format of `vit-inspect train`

    trained_here = trained_here_path(weights)
    if trained_here is not None:
        return load_trained(trained_here, "local file" if trained_here == Path(weights) else "shipped")
    model = create_untrained(name, seed)
    if isinstance(weights, str) and weights in KEYWORDS:
        path, source = _resolve_keyword(name, weights)
    else:
        path, source = Path(weights), "local file"
    if path is None:
        if weights == "auto" and verbose:
            print(untrained_banner(name, seed), file=sys.stderr)
        return LoadedViT(model.eval(), Provenance(name, "random", False, None, seed))
    if trained_here_path(path) is not None:  # e.g. VIT_INSPECT_WEIGHTS names a file from `vit-inspect train`
        return load_trained(path, source)
    trained = load_weights_file(model, path)
    return LoadedViT(model.eval(), Provenance(name, source, trained, str(path)))


def create_untrained(name: str, seed: int = 0, **model_kwargs) -> nn.Module:
    """The architecture ``name`` with deterministic random weights (eval mode), none of them degenerate.

    timm initialises every LayerNorm to gamma = 1, beta = 0, every linear bias to 0 and
    the class token to about 1e-6: on those weights a hand computation that drops a bias,
    drops gamma/beta, swaps norm1 and norm2 or forgets the class token gives the same
    numbers as the right one. :func:`randomise_constant_init` redraws them, so every
    parameter changes the output if it is used wrongly. ``model_kwargs`` go to
    ``timm.create_model`` (e.g. ``img_size=384``); the caller's random state is left untouched.
    """
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **model_kwargs)
            randomise_constant_init(model)
    except RuntimeError as err:  # timm's "Unknown model"
        raise WeightsError(f"unknown model name {name!r}: {err}") from None
    return model.eval()


# Scales of the redrawn parameters. Patch tokens of a real photo have a standard
# deviation of about 0.3 on timm's initialisation of ViT-B/16: the prefix tokens get that
# scale, so that they weigh like an image token; the position embedding and the biases a
# third of it, enough to matter without drowning the image content.
TOKEN_STD = 0.3
POS_EMBED_STD = 0.1
BIAS_STD = 0.1
NORM_GAMMA_RANGE = (0.5, 1.5)  # LayerNorm gamma and LayerScale factors: multiplied by U(0.5, 1.5)


@torch.no_grad()
def randomise_constant_init(model: nn.Module) -> nn.Module:
    """Redraw, from the global random state, the parameters timm initialises to constants; in place.

    Norm layers: gamma x U(0.5, 1.5), beta ~ N(0, 0.1^2). Linear biases ~ N(0, 0.1^2).
    LayerScale gamma x U(0.5, 1.5). Class, distillation and register tokens ~ N(0, 0.3^2);
    the position embedding ~ N(0, 0.1^2). Weight matrices and the patch-embedding conv keep
    timm's (already random) initialisation. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
            module.weight.mul_(torch.empty_like(module.weight).uniform_(*NORM_GAMMA_RANGE))
            if module.bias is not None:
                module.bias.normal_(0.0, BIAS_STD)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.normal_(0.0, BIAS_STD)
        elif hasattr(module, "gamma") and isinstance(module.gamma, nn.Parameter):  # timm's LayerScale
            module.gamma.mul_(torch.empty_like(module.gamma).uniform_(*NORM_GAMMA_RANGE))
    for token in ("cls_token", "dist_token", "reg_token"):
        if isinstance(getattr(model, token, None), nn.Parameter):
            getattr(model, token).normal_(0.0, TOKEN_STD)
    if isinstance(getattr(model, "pos_embed", None), nn.Parameter):
        model.pos_embed.normal_(0.0, POS_EMBED_STD)
    return model


def _resolve_keyword(name: str, weights: str) -> tuple[Path | None, str]:
    if weights == "random":
        return None, "random"
    if weights == "auto" and os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]), "local file"
    cached = find_in_hub_cache(name)
    if cached is not None:
        return cached, "hub cache"
    if hub_reachable():
        return download_weights(name), "hub download"
    if weights == "auto":
        return None, "random"
    raise WeightsError(
        f"pretrained weights for {name} are not in the Hugging Face cache and the hub "
        f"cannot be reached; on a machine with network run `vit-inspect download "
        f"--model {name} --to DIR` and pass weights=DIR/model.safetensors "
        f"(or set {WEIGHTS_ENV})")


def hub_repo_id(name: str) -> str:
    """The Hugging Face repo that holds timm's weights for ``name``."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"timm knows no Hugging Face weights for {name!r}")
    return cfg.hf_hub_id


def find_in_hub_cache(name: str) -> Path | None:
    """Path of the cached weights file for ``name``, or None. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = hub_repo_id(name)
    for filename in HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the hub opens within ``timeout`` seconds.

    Runs in a daemon thread because DNS lookups ignore socket timeouts.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download_weights(name: str, to: str | os.PathLike | None = None) -> Path:
    """Download the weights file of ``name`` (into ``to`` or the HF cache); return its path."""
    from huggingface_hub import hf_hub_download

    repo_id = hub_repo_id(name)
    last_error: Exception | None = None
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, filename, local_dir=to))
        except Exception as err:  # the hub raises many types; all mean "not this file"
            last_error = err
    raise WeightsError(f"could not download weights for {name} from {repo_id}: {last_error}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; never executes pickled code."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or a pickle that wants to run code
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"cannot read weights file {path}: {reason}") from None
    return _unwrap_checkpoint(state, path)


def _unwrap_checkpoint(state: object, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_file(model: nn.Module, path: Path) -> bool:
    """Load ``path`` into ``model`` or raise without touching it.

    Returns False if the file was marked untrained by :func:`save_weights`.
    """
    state = read_state_dict(path)
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise WeightsError(f"weights file {path} does not fit {model.default_cfg.get('architecture', type(model).__name__)}: {problems}")
    model.load_state_dict(state, strict=True)
    return not _marked_untrained(path)


def state_dict_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """A one-line description of missing/unexpected/misshaped keys, or ''."""
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    misshaped = sorted(k for k in expected.keys() & got.keys() if expected[k].shape != got[k].shape)
    parts = [f"{label} {len(keys)} keys ({_preview(keys)})"
             for label, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("wrong shape for", misshaped)) if keys]
    return "; ".join(parts)


def _preview(keys: list[str], limit: int = 4) -> str:
    more = f", ... {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _marked_untrained(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get(UNTRAINED_METADATA_KEY) == "true"


def save_weights(model: nn.Module, path: str | os.PathLike, untrained: bool) -> Path:
    """Save ``model`` as safetensors in timm's key layout, marking untrained weights."""
    from safetensors.torch import save_file
    path = Path(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={UNTRAINED_METADATA_KEY: str(untrained).lower()})
    return path


def untrained_banner(name: str, seed: int) -> str:
    bar = "!" * 78
    return "\n".join([
        bar,
        f"!! UNTRAINED WEIGHTS for {name} (random init, seed {seed}).",
        "!! No local file, no Hugging Face cache, and the hub cannot be reached.",
        "!! Predictions, attention maps and embeddings from this model mean NOTHING.",
        "!! Real weights: `vit-inspect download --to DIR`, then weights=DIR/model.safetensors.",
        bar,
    ])
