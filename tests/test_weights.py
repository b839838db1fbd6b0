"""load_vit through every route, on weight files made here in timm's layout.

The hub's probe and proxies are tested in test_hub.py, untrained init in test_provenance.py,
the small ViT's file in test_small_vit.py."""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from vit_inspect import WeightsError, create_untrained, download_weights, fused_attention, load_vit, save_weights
from vit_inspect import model_info
from vit_inspect import weights as weights_module
from vit_inspect.recorder import fused_attention_flags
from vit_inspect.weights import WEIGHTS_ENV, hub_repo_id

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


def spy_on_the_hub(monkeypatch) -> list[tuple[bool, float]]:
    """Record each hub probe (answer, seconds it took); make any download attempt fail the test."""
    probes, real_probe = [], weights_module.hub_reachable

    def probe(*args, **kwargs):
        start = time.perf_counter()
        answer = real_probe(*args, **kwargs)
        probes.append((answer, time.perf_counter() - start))
        return answer

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted although the hub cannot be reached")

    monkeypatch.setattr(weights_module, "hub_reachable", probe)
    monkeypatch.setattr(weights_module, "download_weights", no_download)
    return probes


def test_auto_offline_falls_back_fast_with_banner(monkeypatch, capsys):
    """Fast = one probe that keeps its own deadline and no download with its minute of retries
    (a wall-clock limit on the whole call would measure the machine's load, not the code)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    probes = spy_on_the_hub(monkeypatch)
    _, provenance = load_vit(TAGGED_TINY, weights="auto")
    assert [answer for answer, _ in probes] == [False], "one probe of the hub, answered no"
    assert probes[0][1] < weights_module.PROBE_TIMEOUT_S + 1.0, "the probe keeps its deadline"
    assert not provenance.trained and provenance.source == "random"
    assert "UNTRAINED WEIGHTS" in capsys.readouterr().err


def test_pretrained_offline_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probes = spy_on_the_hub(monkeypatch)

    def no_socket(*args, **kwargs):
        raise AssertionError("a connection was opened although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    with pytest.raises(WeightsError, match="vit-inspect download") as error:
        load_vit(TAGGED_TINY, weights="pretrained")
    assert [answer for answer, _ in probes] == [False], "HF_HUB_OFFLINE answers the probe without the network"
    assert "HF_HUB_OFFLINE=1 is set, so the hub is not contacted" in str(error.value)


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


# ---------------------------------------------------------------- VIT_INSPECT_WEIGHTS

def test_env_variable_may_name_the_download_folder(trained_like, tmp_path, monkeypatch):
    path, expected = trained_like
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(path, folder / "model.safetensors")
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    model, provenance = load_vit(TAGGED_TINY)
    torch.testing.assert_close(logits(model), expected)
    assert provenance.path == str(folder / "model.safetensors")


def test_env_variable_and_paths_expand_the_home_folder(trained_like, tmp_path, monkeypatch):
    path, expected = trained_like
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w").mkdir()
    shutil.copy(path, tmp_path / "w" / "model.safetensors")
    monkeypatch.setenv(WEIGHTS_ENV, "~/w/model.safetensors")
    model, provenance = load_vit(TAGGED_TINY)
    torch.testing.assert_close(logits(model), expected)
    assert provenance.path == str(tmp_path / "w" / "model.safetensors")
    monkeypatch.delenv(WEIGHTS_ENV)
    assert load_vit(TAGGED_TINY, weights="~/w").provenance.path == str(tmp_path / "w" / "model.safetensors")


@pytest.mark.parametrize("case", ["missing", "folder without weights", "wrong model"])
def test_env_variable_errors_say_where_the_file_came_from(trained_like, tmp_path, monkeypatch, case):
    path, _ = trained_like
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "other.safetensors").write_bytes(b"x")
    value = {"missing": str(tmp_path / "nope.safetensors"), "folder without weights": str(folder),
             "wrong model": str(path)}[case]
    monkeypatch.setenv(WEIGHTS_ENV, value)
    with pytest.raises(WeightsError) as error:
        load_vit("vit_small_patch16_224" if case == "wrong model" else TAGGED_TINY)
    message = str(error.value)
    assert message.startswith(f"{WEIGHTS_ENV}={value}: ") and "\n" not in message
    if case == "folder without weights":
        assert "without model.safetensors" in message and "other.safetensors" in message


# ---------------------------------------------------------------- files of unknown training

def test_file_without_the_suites_metadata_is_training_unknown(tmp_path):
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in create_untrained(TAGGED_TINY, seed=5).state_dict().items()}
    save_file(state, str(tmp_path / "theirs.safetensors"))
    torch.save(state, tmp_path / "theirs.pth")
    for name in ("theirs.safetensors", "theirs.pth"):
        _, provenance = load_vit(TAGGED_TINY, weights=tmp_path / name)
        assert provenance.trained, "a file of unknown training is treated as trained"
        assert provenance.training_known is False
        assert "local file, training unknown" in provenance.label and "UNTRAINED" not in provenance.label
        assert provenance.as_dict()["training_known"] is False


def test_files_saved_by_the_suite_know_their_training(trained_like, tmp_path):
    path, _ = trained_like
    known = load_vit(TAGGED_TINY, weights=path).provenance
    assert known.trained and known.training_known and known.label == f"{TAGGED_TINY} (local file)"
    untrained = save_weights(create_untrained(TAGGED_TINY), tmp_path / "u.safetensors", untrained=True)
    provenance = load_vit(TAGGED_TINY, weights=untrained).provenance
    assert not provenance.trained and provenance.training_known
    assert provenance.label == "UNTRAINED weights (local file saved as untrained) - architecture vit_tiny_patch16_224"


def test_untrained_label_names_the_architecture_not_a_pretrained_tag():
    provenance = load_vit(TAGGED_TINY, weights="random").provenance
    assert provenance.label == "UNTRAINED weights (random init, seed 0) - architecture vit_tiny_patch16_224"
    assert "augreg" not in provenance.label


# ---------------------------------------------------------------- permissions and message syntax

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_saved_and_downloaded_files_get_ordinary_permissions(tiny, tmp_path, monkeypatch, umask, mode):
    def fake_download(repo_id, filename, local_dir=None):
        target = Path(local_dir) / filename
        target.write_bytes(b"weights")
        target.chmod(0o600)  # what a private temporary file would have
        return str(target)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    previous = os.umask(umask)
    try:
        saved = save_weights(tiny, tmp_path / "mine.safetensors", untrained=True)
        downloaded = download_weights(TAGGED_TINY, tmp_path)
    finally:
        os.umask(previous)
    assert oct(saved.stat().st_mode & 0o777) == oct(mode)
    assert oct(downloaded.stat().st_mode & 0o777) == oct(mode)


def test_python_messages_use_python_syntax(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        load_vit(TAGGED_TINY, weights="pretrained")
    assert 'weights="DIR/model.safetensors"' in str(error.value) and "--weights" not in str(error.value)
    load_vit(TAGGED_TINY, weights="auto")
    banner = capsys.readouterr().err
    assert 'weights="DIR/model.safetensors"' in banner and "--weights" not in banner
    assert "HF_HUB_OFFLINE=1 is set" in banner
