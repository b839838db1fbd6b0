"""Shared fixtures: an isolated Hugging Face cache and small seeded models."""
from __future__ import annotations

import pytest

from vit_inspect import create_untrained
from vit_inspect.weights import WEIGHTS_ENV

from .image_kinds import write_invalid_images, write_valid_images

SMALL_MODEL = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture(autouse=True)
def isolated_hub_cache(tmp_path_factory, monkeypatch):
    """No test sees (or writes to) the developer's real Hugging Face cache."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return cache


@pytest.fixture(scope="session")
def small_model():
    return create_untrained(SMALL_MODEL, seed=0)


@pytest.fixture(scope="session")
def valid(tmp_path_factory):
    """One file per valid image kind (see image_kinds.py)."""
    return write_valid_images(tmp_path_factory.mktemp("valid"))


@pytest.fixture(scope="session")
def invalid(tmp_path_factory):
    """One file per invalid image kind (see image_kinds.py)."""
    return write_invalid_images(tmp_path_factory.mktemp("invalid"))
