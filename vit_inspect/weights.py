"""Model loading with an explicit record of where the weights came from.

Routes: a local file (``.safetensors`` preferred, ``.pth``/``.bin`` read with
``weights_only=True``), the Hugging Face cache, a download, or seeded random
weights. ``weights="auto"`` tries them in that order and falls back to random
weights with a banner, never silently.

The hub is probed the way huggingface_hub will connect: through the proxy that
``HTTPS_PROXY``/``HTTP_PROXY`` name (``NO_PROXY`` honoured), else directly, within a
few seconds; not at all when ``HF_HUB_OFFLINE`` is set.
"""
from __future__ import annotations

import base64
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple
from urllib.parse import ParseResult, unquote, urlparse

import timm
import torch
from torch import nn

from .errors import WeightsError, weights_argument
from .model_info import DEFAULT_MODEL


WEIGHTS_ENV = "VIT_INSPECT_WEIGHTS"
UNTRAINED_METADATA_KEY = "vit_inspect_untrained"
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0
KEYWORDS = ("auto", "pretrained", "random")
OFFLINE_ENV = "HF_HUB_OFFLINE"
TRUE_VALUES = ("1", "true", "yes", "on")
DEFAULT_PORTS = {"http": 80, "https": 443}
PROXY_FAILURES = (407, 502, 503, 504)  # a proxy's own answers: auth wanted, upstream unreachable


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


def load_vit(name: str = DEFAULT_MODEL, weights: str | os.PathLike = "auto",
             seed: int = 0, verbose: bool = True) -> LoadedViT:
    """Create timm model ``name`` in eval mode with weights from ``weights``.

    ``weights``: "auto" | "pretrained" | "random" | "digits" (the small ViT trained here,
    shipped in data/) | a local file path (``~`` expanded; a folder holding
    ``model.safetensors`` stands for that file). A file saved by ``vit-inspect train``
    names its own architecture in its header, which then replaces ``name``.
    Returns ``(model, provenance)``.
    """
    from .training import load_trained, trained_here_path  # the format of `vit-inspect train`

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


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids huggingface_hub any network access."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in TRUE_VALUES


def hub_endpoint() -> ParseResult:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def proxy_for(url: ParseResult) -> ParseResult | None:
    """The proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` (or lower case) name for ``url``;
    None when there is none or ``NO_PROXY`` exempts the host."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(url.netloc, proxies):
        return None
    return urlparse(proxy if "://" in proxy else f"http://{proxy}")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if the hub can be reached within ``timeout`` seconds, the way huggingface_hub
    will connect: through the proxy named for it (the proxy must open a tunnel to the hub,
    HTTP 2xx), else by a direct TCP connection. False at once under ``HF_HUB_OFFLINE``.

    Runs in a daemon thread because DNS lookups ignore socket timeouts.
    """
    if hub_offline():
        return False
    url, deadline = hub_endpoint(), time.monotonic() + timeout
    proxy = proxy_for(url)
    if proxy is None:
        return _before(deadline, lambda: _open(url, deadline, tls=False).close() or True)
    return _before(deadline, lambda: _through_proxy(proxy, url, deadline))


def hub_unreachable_reason() -> str:
    """Why :func:`hub_reachable` says no, for messages: the offline variable, or the route tried."""
    if hub_offline():
        return f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]} is set, so the hub is not contacted"
    proxy = proxy_for(hub_endpoint())
    if proxy is None:
        return "the hub cannot be reached"
    return (f"the hub cannot be reached through the proxy {proxy.scheme}://{proxy.hostname}:{_port(proxy)} "
            "(HTTPS_PROXY / HTTP_PROXY; NO_PROXY lists hosts to reach directly)")


def _before(deadline: float, probe: Callable[[], bool]) -> bool:
    """``probe()`` in a daemon thread; False if it fails or has not answered by ``deadline``."""
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(bool(probe()))
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    return bool(result and result[0])


def _port(url: ParseResult) -> int:
    return url.port or DEFAULT_PORTS.get(url.scheme, 80)


def _open(url: ParseResult, deadline: float, tls: bool) -> socket.socket:
    """A connection to ``url``'s host and port, TLS-wrapped if ``tls``, timing out at ``deadline``."""
    remaining = max(deadline - time.monotonic(), 0.001)
    sock = socket.create_connection((url.hostname, _port(url)), timeout=remaining)
    return ssl.create_default_context().wrap_socket(sock, server_hostname=url.hostname) if tls else sock


def _through_proxy(proxy: ParseResult, url: ParseResult, deadline: float) -> bool:
    """Ask ``proxy`` to reach the hub: CONNECT for an https hub, a HEAD request for an http one.

    A proxy spoken to in another protocol (socks) can only be checked for answering at all.
    """
    with _open(proxy, deadline, tls=proxy.scheme == "https") as sock:
        if proxy.scheme not in DEFAULT_PORTS:
            return True
        sock.sendall(_proxy_request(proxy, url))
        status = _status_code(sock, deadline)
    if url.scheme == "https":
        return 200 <= status < 300
    return 100 <= status < 600 and status not in PROXY_FAILURES


def _proxy_request(proxy: ParseResult, url: ParseResult) -> bytes:
    target = f"{url.hostname}:{_port(url)}"
    line = f"CONNECT {target} HTTP/1.1" if url.scheme == "https" else f"HEAD http://{target}/ HTTP/1.1"
    headers = [line, f"Host: {target}", "Connection: close"]
    if proxy.username:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        headers.append("Proxy-Authorization: Basic " + base64.b64encode(credentials.encode()).decode())
    return ("\r\n".join(headers) + "\r\n\r\n").encode()


def _status_code(sock: socket.socket, deadline: float) -> int:
    """The status code of the HTTP response on ``sock`` (0 if none came or it is not HTTP)."""
    received = b""
    while b"\r\n" not in received and len(received) < 4096:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(1024)
        if not chunk:
            break
        received += chunk
    parts = received.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def download_weights(name: str, to: str | os.PathLike | None = None) -> Path:
    """Download the weights file of ``name`` (into ``to`` or the HF cache); return its path."""
    from huggingface_hub import hf_hub_download

    repo_id = hub_repo_id(name)
    last_error: Exception | None = None
    for filename in HUB_FILENAMES:
        try:
            path = Path(hf_hub_download(repo_id, filename, local_dir=to))
        except Exception as err:  # the hub raises many types; all mean "not this file"
            last_error = err
            continue
        return ordinary_permissions(path)
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
