"""Shared fixtures: an isolated Hugging Face cache, the one small model, image files of every kind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit_inspect import create_untrained
from vit_inspect.export import find_chromium
from vit_inspect.weights import WEIGHTS_ENV

from .image_kinds import write_invalid_images, write_valid_images

TINY = "vit_tiny_patch16_224"  # 12 blocks, 3 heads of 64, D = 192, 14 x 14 patches of 16 px


@pytest.fixture(autouse=True)
def isolated_hub_cache(tmp_path_factory, monkeypatch):
    """No test sees (or writes to) the developer's real Hugging Face cache."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return cache


@pytest.fixture(scope="session")
def tiny():
    """Seeded untrained ViT-Ti/16, equal to ``load_vit(TINY, weights="random")``; shared, so never modify it.

    At the end of the session the test fails if any test changed a parameter or a flag.
    """
    model = create_untrained(TINY, seed=0)
    before = _fingerprint(model)
    yield model
    assert _fingerprint(model) == before, "a test modified the shared `tiny` model"


def _fingerprint(model: torch.nn.Module) -> tuple:
    params = tuple((name, float(t.double().sum()), tuple(t.shape)) for name, t in model.state_dict().items())
    flags = tuple((name, m.fused_attn) for name, m in model.named_modules() if hasattr(m, "fused_attn"))
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return params, flags, hooks, model.training


@pytest.fixture(scope="session")
def valid(tmp_path_factory):
    """One file per valid image kind (see image_kinds.py)."""
    return write_valid_images(tmp_path_factory.mktemp("valid"))


@pytest.fixture(scope="session")
def invalid(tmp_path_factory):
    """One file per invalid image kind (see image_kinds.py)."""
    return write_invalid_images(tmp_path_factory.mktemp("invalid"))


@pytest.fixture(scope="session")
def class_folders(tmp_path_factory):
    """Three classes of five small images each (grey and RGBA, several sizes), one sub-folder per class.

    Class k's pixels lie between 80 k and 80 k + 60, so a label can be checked from the image.
    """
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("class-folders")
    rng = np.random.default_rng(0)
    for index, name in enumerate(["circle", "square", "stripe"]):
        (root / name).mkdir()
        for k in range(5):
            grey = Image.fromarray((rng.random((10 + k, 12)) * 60 + index * 80).astype(np.uint8), mode="L")
            (grey.convert("RGBA") if k % 2 else grey).save(root / name / f"{k}.png")
    return root


REQUIRE_CHROMIUM = "VIT_INSPECT_REQUIRE_CHROMIUM"  # set by .ci/run: in CI a missing browser is a failure


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser's path: a skip on a machine without one, a failure in CI (.ci/run installs it)."""
    path = find_chromium()
    if path is None:
        if os.environ.get(REQUIRE_CHROMIUM):
            pytest.fail(f"{REQUIRE_CHROMIUM} is set but chromium is not on PATH (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs it and runs this")
    return path


def cli_error_before_torch(command: str, args: list[str]) -> str:
    """``vit-inspect COMMAND ARGS`` in a fresh interpreter: exit code 1 before torch is imported; its one error line."""
    code = ("import sys\nfrom vit_inspect.cli import main\n"
            f"code = main([{command!r}, *{args!r}])\n"
            "assert code == 1 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    err = result.stderr.strip()
    assert err.startswith("vit-inspect: error:") and "\n" not in err, err
    return err
