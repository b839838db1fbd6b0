"""load_vit through every route, on weight files made here in timm's layout."""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import time
from pathlib import Path

import pytest
import timm
import torch

from vit_inspect import WeightsError, create_untrained, fused_attention, load_vit, save_weights
from vit_inspect import weights as weights_module
from vit_inspect.recorder import fused_attention_flags
from vit_inspect.weights import WEIGHTS_ENV, hub_reachable, hub_repo_id

TAGGED_TINY = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a pretrained tag, for the hub routes


torch.manual_seed(0)
PIXELS = torch.randn(2, 3, 224, 224)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(PIXELS)


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A seed-7 model saved as if it were real weights, plus its reference logits."""
    model = create_untrained(TAGGED_TINY, seed=7)
    folder = tmp_path_factory.mktemp("weights")
    path = save_weights(model, folder / "model.safetensors", untrained=False)
    return path, logits(model)


def fake_hub_cache(cache: Path, name: str, weights_file: Path) -> Path:
    """Lay ``weights_file`` out exactly as huggingface_hub caches a download."""
    repo = cache / ("models--" + hub_repo_id(name).replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return Path(shutil.copy(weights_file, snapshot / "model.safetensors"))


def test_random_weights_are_seeded_and_labelled():
    first, provenance = load_vit(TAGGED_TINY, weights="random", seed=3)
    second, _ = load_vit(TAGGED_TINY, weights="random", seed=3)
    other, _ = load_vit(TAGGED_TINY, weights="random", seed=4)
    torch.testing.assert_close(logits(first), logits(second), rtol=0, atol=0)
    assert not torch.allclose(logits(first), logits(other))
    assert not provenance.trained and provenance.source == "random"
    assert "UNTRAINED" in provenance.label and not first.training


def test_random_weights_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_vit(TAGGED_TINY, weights="random", seed=9)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_file_routes_give_identical_logits(trained_like, tmp_path, suffix):
    path, expected = trained_like
    if suffix != ".safetensors":
        state = create_untrained(TAGGED_TINY, seed=7).state_dict()
        path = tmp_path / f"weights{suffix}"
        torch.save({"state_dict": state} if suffix == ".pth" else state, path)
    model, provenance = load_vit(TAGGED_TINY, weights=path)
    torch.testing.assert_close(logits(model), expected)
    assert provenance.trained and provenance.source == "local file" and provenance.path == str(path)


def test_env_variable_route(trained_like, monkeypatch):
    path, expected = trained_like
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    model, provenance = load_vit(TAGGED_TINY, weights="auto")
    torch.testing.assert_close(logits(model), expected)
    assert provenance.source == "local file"


@pytest.mark.parametrize("keyword", ["auto", "pretrained"])
def test_hub_cache_route(trained_like, isolated_hub_cache, keyword):
    path, expected = trained_like
    cached = fake_hub_cache(isolated_hub_cache, TAGGED_TINY, path)
    model, provenance = load_vit(TAGGED_TINY, weights=keyword)
    torch.testing.assert_close(logits(model), expected)
    assert provenance.source == "hub cache" and provenance.path == str(cached) and provenance.trained


def test_hub_download_route(trained_like, monkeypatch):
    """Network is simulated: the downloader hands back our file for timm's repo id."""
    path, expected = trained_like
    asked = []

    def fake_download(repo_id, filename, local_dir=None):
        asked.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(weights_module, "hub_reachable", lambda: True)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    model, provenance = load_vit(TAGGED_TINY, weights="pretrained")
    torch.testing.assert_close(logits(model), expected)
    assert provenance.source == "hub download"
    assert asked == [(hub_repo_id(TAGGED_TINY), "model.safetensors")]


def test_file_marked_untrained_stays_untrained(tmp_path):
    path = save_weights(create_untrained(TAGGED_TINY, seed=1), tmp_path / "w.safetensors", untrained=True)
    _, provenance = load_vit(TAGGED_TINY, weights=path)
    assert not provenance.trained and "UNTRAINED" in provenance.label


def test_auto_offline_falls_back_fast_with_banner(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    _, provenance = load_vit(weights="auto")
    assert time.perf_counter() - start < 5.0
    assert not provenance.trained and provenance.source == "random"
    assert "UNTRAINED WEIGHTS" in capsys.readouterr().err


def test_pretrained_offline_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="vit-inspect download"):
        load_vit(weights="pretrained")
    assert time.perf_counter() - start < 5.0


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


def test_wrong_architecture_names_file_and_keys(trained_like):
    path, _ = trained_like
    with pytest.raises(WeightsError) as error:
        load_vit("vit_small_patch16_224", weights=path)
    message = str(error.value)
    assert str(path) in message and "wrong shape for" in message and "\n" not in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = create_untrained(TAGGED_TINY).state_dict()
    state["extra.weight"] = state.pop("head.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing 1 keys \(head.weight\); unexpected 1 keys \(extra.weight\)"):
        load_vit(TAGGED_TINY, weights=path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_give_one_clear_error(trained_like, tmp_path, damage):
    path, _ = trained_like
    data = path.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(WeightsError, match="broken.safetensors"):
        load_vit(TAGGED_TINY, weights=broken)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/vit_inspect_pickle_ran")


def test_pickle_never_executes_code(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"patch_embed.proj.weight": RunsCode()}, protocol=2))
    with pytest.raises(WeightsError, match="evil.pth"):
        load_vit(TAGGED_TINY, weights=path)
    assert not MARKER.exists()


def test_missing_file_and_unknown_model():
    with pytest.raises(WeightsError, match="not found: /nonexistent/w.safetensors"):
        load_vit(TAGGED_TINY, weights="/nonexistent/w.safetensors")
    with pytest.raises(WeightsError, match="unknown model name"):
        load_vit("vit_does_not_exist", weights="random")


def test_failed_load_leaves_model_untouched(tiny, trained_like, tmp_path):
    from vit_inspect.weights import load_weights_file
    state = create_untrained("vit_small_patch16_224").state_dict()
    path = tmp_path / "other.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(WeightsError):
        load_weights_file(tiny, path)
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch32_224",
                                  "deit_tiny_distilled_patch16_224", "vit_base_patch16_384"])
def test_other_timm_vits_load_the_same_way(name, tmp_path):
    model, provenance = load_vit(name, weights="random")
    size = model.pretrained_cfg["input_size"][-1]
    assert model(torch.zeros(1, 3, size, size)).shape[-1] == model.num_classes
    path = save_weights(model, tmp_path / "w.safetensors", untrained=True)
    reloaded, _ = load_vit(name, weights=path)
    torch.testing.assert_close(reloaded.state_dict(), model.state_dict())


def test_fused_attention_is_scoped_and_restored(tiny):
    before = fused_attention_flags(tiny)
    tiny.blocks[1].attn.fused_attn = not before["blocks.1.attn"]
    mixed = fused_attention_flags(tiny)
    with pytest.raises(ZeroDivisionError):
        with fused_attention(tiny, enabled=False):
            assert not any(fused_attention_flags(tiny).values())
            1 / 0
    assert fused_attention_flags(tiny) == mixed
    tiny.blocks[1].attn.fused_attn = before["blocks.1.attn"]
