"""Where a model's weights come from and how they are labelled: weight files, ``Provenance``, untrained init.

A weights file is read without executing pickled code (``.safetensors`` preferred,
``.pth``/``.bin`` with ``weights_only=True``) and loaded only if every key and shape
fits; :func:`save_weights` marks in the file whether its weights are untrained, and
:class:`Provenance` carries that record (and the route that found the file) into every
figure title and printed prediction. Untrained weights come from
:func:`create_untrained`, whose random init leaves no parameter constant.

Finding the file is :mod:`vit_inspect.weights`' job; the hub is :mod:`vit_inspect.hub`'s.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from torch import nn

from .errors import WeightsError


UNTRAINED_METADATA_KEY = "vit_inspect_untrained"


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from.

    ``source`` is one of "local file", "hub cache", "hub download", "random", "shipped".
    ``trained``: treat the weights as trained; False only when they are KNOWN untrained
    (random init, or a file saved as untrained). ``training_known``: False for a local
    file without this suite's metadata, which may hold anything. ``trained_on``: what a
    file saved by ``vit-inspect train`` says it was trained on.
    """

    model: str
    source: str
    trained: bool
    path: str | None = None
    seed: int | None = None
    training_known: bool = True
    trained_on: str | None = None

    @property
    def label(self) -> str:
        """Short text for figure titles and printed predictions.

        Untrained weights never carry a pretrained tag: only the architecture is named.
        """
        if self.trained and self.trained_on:
            return f"{self.model} trained here on {self.trained_on} ({self.source})"
        if not self.trained:
            origin = f"random init, seed {self.seed}" if self.source == "random" else \
                f"{self.source} saved as untrained"
            return f"UNTRAINED weights ({origin}) - architecture {architecture_of(self.model)}"
        if not self.training_known:
            return f"{self.model} ({self.source}, training unknown)"
        return f"{self.model} ({self.source})"

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def architecture_of(name: str) -> str:
    """``vit_base_patch16_224.augreg2_in21k_ft_in1k`` -> ``vit_base_patch16_224``: the name without its weights tag."""
    return name.split(".", 1)[0]


class LoadedViT(NamedTuple):
    model: nn.Module
    provenance: Provenance



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
    return saved_as_trained(path) is not False


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


def saved_as_trained(path: Path) -> bool | None:
    """What :func:`save_weights` recorded in ``path``: True trained, False untrained,
    None when the file carries no such record (any other file: training unknown)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        marker = (handle.metadata() or {}).get(UNTRAINED_METADATA_KEY)
    return {"true": False, "false": True}.get(marker)


def save_weights(model: nn.Module, path: str | os.PathLike, untrained: bool) -> Path:
    """Save ``model`` as safetensors in timm's key layout, marking untrained weights.

    The file gets ordinary permissions (0644 less the umask), not the library's 0600.
    """
    from safetensors.torch import save_file
    path = Path(path).expanduser()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={UNTRAINED_METADATA_KEY: str(untrained).lower()})
    return ordinary_permissions(path)


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else by setting it back."""
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def ordinary_permissions(path: Path) -> Path:
    """Give ``path`` the mode a new file gets from ``open()`` for reading by others: 0644 less the umask."""
    try:
        os.chmod(path, 0o644 & ~current_umask())
    except OSError:  # a file in a cache we do not own keeps its mode
        pass
    return path
