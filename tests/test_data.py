"""Every shipped data file is listed with its checksum and its licence."""
from __future__ import annotations

import hashlib

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
