"""Every shipped data file is listed with its checksum and its licence, and ships in the wheel."""
from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from pathlib import Path

from vit_inspect import data_dir


def listed_checksums() -> dict[str, str]:
    lines = (data_dir() / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def test_checksums_match():
    listed = listed_checksums()
    assert listed, "SHA256SUMS is empty"
    for name, digest in listed.items():
        assert hashlib.sha256((data_dir() / name).read_bytes()).hexdigest() == digest, name


def test_every_data_file_is_listed_and_licensed():
    readme = (data_dir() / "README.md").read_text()
    shipped = {p.name for p in data_dir().iterdir() if p.name not in ("README.md", "SHA256SUMS")}
    assert shipped == set(listed_checksums())
    for name in shipped:
        row = next(line for line in readme.splitlines() if f"`{name}`" in line)
        assert "CC0" in row or "public domain" in row, name


def test_weights_name_their_training_data_and_its_licence():
    readme = (data_dir() / "README.md").read_text()
    for path in data_dir().glob("*.safetensors"):
        row = next(line for line in readme.splitlines() if f"`{path.name}`" in line)
        assert "training data" in row and "CC BY 4.0" in row and "make train" in row, path.name


def test_every_data_file_ships_in_the_wheel():
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["vit_inspect.sample_data"]
    for path in data_dir().iterdir():
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), f"{path.name} is left out of the wheel"
