"""Reaching the hub: the probe keeps its deadline, goes through the proxies the way huggingface_hub will,
honours NO_PROXY and HF_HUB_OFFLINE, and its messages name the route without a password."""
from __future__ import annotations

import base64
import socket
import threading
import time

import pytest
import torch

from vit_inspect import WeightsError, create_untrained, load_vit, save_weights
from vit_inspect.hub import hub_reachable

TAGGED_TINY = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a pretrained tag, for the hub routes


def test_unresponsive_hub_is_given_up_after_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    def hanging_connect(*args, **kwargs):
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    start = time.perf_counter()
    assert hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 2.0


def test_probe_sees_a_listening_endpoint(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()


# ---------------------------------------------------------------- proxies

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


@pytest.fixture
def clean_network_env(monkeypatch):
    """No proxy variables from the developer's shell, the hub not declared offline."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return monkeypatch


class LocalListener:
    """A server on 127.0.0.1 that records each request head and answers ``status_line``
    (None: it accepts and stays silent). Serves at most 20 connections, stops on exit."""

    def __init__(self, status_line: str | None = "HTTP/1.1 200 Connection established"):
        self.status_line = status_line
        self.requests: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "LocalListener":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closed.set()
        self.thread.join(5)
        self.server.close()

    def _serve(self) -> None:
        for _ in range(20):
            while not self.closed.is_set():
                try:
                    conn, _ = self.server.accept()
                    break
                except socket.timeout:
                    continue
            else:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.decode("latin-1"))
                if self.status_line is None:
                    self.closed.wait(5)
                else:
                    conn.sendall(f"{self.status_line}\r\n\r\n".encode())


def test_probe_goes_through_the_https_proxy(clean_network_env):
    with LocalListener() as proxy:
        clean_network_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        assert hub_reachable(timeout=3.0), "a proxy that opens the tunnel means the hub is reachable"
    assert len(proxy.requests) == 1
    assert proxy.requests[0].startswith("CONNECT huggingface.co:443 HTTP/1.1\r\n")


def test_lower_case_proxy_variable_and_credentials(clean_network_env):
    with LocalListener() as proxy:
        clean_network_env.setenv("https_proxy", f"http://student:s3cr%40t@127.0.0.1:{proxy.port}")
        assert hub_reachable(timeout=3.0)
    auth = [line for line in proxy.requests[0].split("\r\n") if line.startswith("Proxy-Authorization:")]
    assert auth == ["Proxy-Authorization: Basic " + base64.b64encode(b"student:s3cr@t").decode()]


@pytest.mark.parametrize("status_line", ["HTTP/1.1 502 Bad Gateway", "HTTP/1.1 407 Proxy Authentication Required",
                                         "garbage", None])
def test_proxy_that_cannot_reach_the_hub_means_offline_within_the_timeout(clean_network_env, status_line):
    with LocalListener(status_line) as proxy:
        clean_network_env.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")  # no scheme: http:// assumed
        start = time.perf_counter()
        assert not hub_reachable(timeout=1.0)
        assert time.perf_counter() - start < 2.0
    assert proxy.requests and proxy.requests[0].startswith("CONNECT huggingface.co:443")


def test_http_endpoint_through_http_proxy_and_no_proxy_bypass(clean_network_env):
    with LocalListener("HTTP/1.1 404 Not Found") as proxy, LocalListener("HTTP/1.1 200 OK") as hub:
        clean_network_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.port}")
        clean_network_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        assert hub_reachable(timeout=3.0), "any answer of the hub itself through the proxy means reachable"
        assert proxy.requests[0].startswith(f"HEAD http://127.0.0.1:{hub.port}/ HTTP/1.1")
        clean_network_env.setenv("NO_PROXY", "localhost,127.0.0.1")
        assert hub_reachable(timeout=3.0)
        time.sleep(0.3)  # let the listener record the direct connection
    assert len(proxy.requests) == 1, "NO_PROXY lists the hub's host: the probe must go direct"
    assert len(hub.requests) == 1


def test_offline_variable_wins_over_a_proxy_and_is_named(clean_network_env):
    with LocalListener() as proxy:
        clean_network_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        clean_network_env.setenv("HF_HUB_OFFLINE", "1")
        assert not hub_reachable()
        with pytest.raises(WeightsError, match="HF_HUB_OFFLINE=1 is set"):
            load_vit(TAGGED_TINY, weights="pretrained")
    assert proxy.requests == []


def test_unreachable_reason_names_the_proxy_without_its_password(clean_network_env):
    with LocalListener("HTTP/1.1 502 Bad Gateway") as proxy:
        clean_network_env.setenv("HTTPS_PROXY", f"http://student:s3cret@127.0.0.1:{proxy.port}")
        with pytest.raises(WeightsError) as error:
            load_vit(TAGGED_TINY, weights="pretrained")
    message = str(error.value)
    assert f"through the proxy http://127.0.0.1:{proxy.port}" in message and "s3cret" not in message


def test_auto_downloads_through_a_proxy_instead_of_falling_back(tmp_path, clean_network_env, capsys):
    """The hub client is simulated; what matters is that the probe said 'reachable' via the proxy."""
    saved = create_untrained(TAGGED_TINY, seed=7)
    path = save_weights(saved, tmp_path / "model.safetensors", untrained=False)
    clean_network_env.setattr("huggingface_hub.hf_hub_download", lambda repo_id, filename, local_dir=None: str(path))
    with LocalListener() as proxy:
        clean_network_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        model, provenance = load_vit(TAGGED_TINY, weights="auto")
    assert provenance.source == "hub download" and provenance.trained
    pixels = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model(pixels), saved(pixels))
    assert "UNTRAINED" not in capsys.readouterr().err
