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
from vit_inspect import model_info
from vit_inspect import weights as weights_module
from vit_inspect.recorder import fused_attention_flags
from vit_inspect.weights import WEIGHTS_ENV, hub_reachable, hub_repo_id

from .mutation import fails, passes

TAGGED_TINY = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a pretrained tag, for the hub routes
PINNED = "vit_base_patch16_224.augreg2_in21k_ft_in1k"  # the suite's tag; the course's "dome" came from orig_in21k


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


# ---------------------------------------------------------------- untrained weights that cannot hide a bug

def constant_at_timm_init(name: str) -> bool:
    """Parameters timm initialises to a constant: norm gamma/beta, linear biases, prefix tokens (~1e-6)."""
    kind = name.rsplit(".", 1)[-1]
    return name in ("cls_token", "reg_token", "dist_token") or (
        kind in ("weight", "bias") and ("norm" in name or kind == "bias") and "patch_embed" not in name)


@pytest.mark.parametrize("name, options", [
    ("vit_tiny_patch16_224", {}),
    ("vit_tiny_patch16_224", {"qk_norm": True, "init_values": 0.1, "reg_tokens": 2}),
    ("deit_tiny_distilled_patch16_224", {}),
])
def test_untrained_weights_have_no_constant_parameter(name, options):
    model = create_untrained(name, seed=0, **options)
    for key, param in model.named_parameters():
        assert float(param.detach().std()) > 0.01, f"{key} is (nearly) constant: a bug that misuses it would go unseen"
    with torch.no_grad():
        assert 0.2 < float(model.cls_token.std()) < 0.4, "the class token weighs like a patch token"
        assert 0.05 < float(model.pos_embed.std()) < 0.15
        gamma = model.blocks[0].norm1.weight
        assert 0.5 <= float(gamma.min()) and float(gamma.max()) <= 1.5


def test_timm_init_is_what_made_bugs_invisible():
    """The reason for randomise_constant_init: on timm's own init, swapping norm1 and norm2 changes nothing."""
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    assert all(bool((p == p.flatten()[0]).all()) for n, p in plain.named_parameters() if n.endswith("norm1.weight"))
    before = logits(plain)
    with torch.no_grad():
        for block in plain.blocks:
            block.norm1, block.norm2 = block.norm2, block.norm1
    torch.testing.assert_close(logits(plain), before, rtol=0, atol=0)


def test_untrained_weights_are_seeded_and_leave_the_callers_random_state_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    first, second = create_untrained(TAGGED_TINY, seed=2), create_untrained(TAGGED_TINY, seed=2)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    torch.testing.assert_close(first.state_dict(), second.state_dict(), rtol=0, atol=0)
    assert not torch.equal(first.cls_token, create_untrained(TAGGED_TINY, seed=3).cls_token)


def relative_change(wrong: torch.Tensor, right: torch.Tensor) -> float:
    return float((wrong - right).norm() / right.norm())


def one_image_logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(PIXELS[:1])


@pytest.fixture(scope="module")
def copy_of_tiny(tiny):
    import copy
    return copy.deepcopy(tiny)


def test_dropping_any_parameter_timm_sets_to_a_constant_changes_the_output(copy_of_tiny):
    """Each norm gamma (-> 1), norm beta and linear bias (-> 0), the class token (-> 0): one at a time."""
    model = copy_of_tiny
    right = one_image_logits(model)
    dropped = [name for name, _ in model.named_parameters() if constant_at_timm_init(name)]
    assert len(dropped) == 12 * 8 + 4  # per block: norm1 w/b, qkv b, proj b, norm2 w/b, fc1 b, fc2 b
    for name in dropped:
        param = model.get_parameter(name)
        saved = param.detach().clone()
        with torch.no_grad():
            param.fill_(1.0 if name.endswith("weight") else 0.0)  # only norms' weights are in the list
        change = relative_change(one_image_logits(model), right)
        with torch.no_grad():
            param.copy_(saved)
        assert change > 1e-3, f"dropping {name} changes the logits by only {change:.1e}"
    torch.testing.assert_close(one_image_logits(model), right, rtol=0, atol=0)


@pytest.mark.parametrize("misuse", ["norm2 for norm1", "norm1 for norm2", "position embedding shifted by one",
                                    "position embedding dropped"])
def test_using_a_parameter_in_the_wrong_place_changes_the_output(copy_of_tiny, misuse):
    model = copy_of_tiny
    right = one_image_logits(model)
    saved = [(block.norm1, block.norm2) for block in model.blocks]
    pos = model.pos_embed.detach().clone()
    with torch.no_grad():
        for block in model.blocks:
            if misuse == "norm2 for norm1":
                block.norm1 = block.norm2
            elif misuse == "norm1 for norm2":
                block.norm2 = block.norm1
        if misuse == "position embedding shifted by one":
            model.pos_embed.copy_(pos.roll(1, dims=1))
        elif misuse == "position embedding dropped":
            model.pos_embed.zero_()
    try:
        change = relative_change(one_image_logits(model), right)
    finally:
        with torch.no_grad():
            for block, (norm1, norm2) in zip(model.blocks, saved):
                block.norm1, block.norm2 = norm1, norm2
            model.pos_embed.copy_(pos)
    assert change > 1e-3, f"{misuse}: logits change by only {change:.1e}"


# ---------------------------------------------------------------- the pinned tag

def check_pinned_tag():
    model, provenance = weights_module.load_vit(model_info.DEFAULT_MODEL, weights="random", verbose=False)
    assert provenance.model == PINNED, f"the suite pins {PINNED}, not {provenance.model}"
    assert model.pretrained_cfg["tag"] == "augreg2_in21k_ft_in1k", model.pretrained_cfg["tag"]
    assert hub_repo_id(provenance.model) == f"timm/{PINNED}"


REAL_CREATE = create_untrained


@pytest.mark.parametrize("target, name, bug", [
    (model_info, "DEFAULT_MODEL", "vit_base_patch16_224.orig_in21k_ft_in1k"),
    (weights_module, "create_untrained",
     lambda name, seed=0, **kw: REAL_CREATE(name.split(".")[0] + ".orig_in21k_ft_in1k", seed, **kw)),
], ids=["pinned name changed", "model built for another tag"])
def test_mutation_wrong_tag_is_caught(monkeypatch, target, name, bug):
    passes(check_pinned_tag)
    monkeypatch.setattr(target, name, bug)
    fails(check_pinned_tag)
