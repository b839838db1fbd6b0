"""Reaching the Hugging Face hub: its cache, a probe through the proxies, a download.

The hub is probed the way huggingface_hub will connect: through the proxy that
``HTTPS_PROXY``/``HTTP_PROXY`` name (``NO_PROXY`` honoured), else directly, within a
few seconds; not at all when ``HF_HUB_OFFLINE`` is set.
"""
from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import ParseResult, unquote, urlparse

import timm

from .errors import WeightsError
from .provenance import ordinary_permissions


HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0
OFFLINE_ENV = "HF_HUB_OFFLINE"
TRUE_VALUES = ("1", "true", "yes", "on")
DEFAULT_PORTS = {"http": 80, "https": 443}
PROXY_FAILURES = (407, 502, 503, 504)  # a proxy's own answers: auth wanted, upstream unreachable


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

