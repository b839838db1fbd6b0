"""Tools for the mutation tests: plant a bug in a helper, show that a check fails on it.

A mutation test runs a check twice: on the real code (it must pass) and with one helper
monkeypatched into a plausible buggy version (it must fail with an AssertionError).
"""
from __future__ import annotations

from typing import Any, Callable

import pytest


class View:
    """A module seen through some changed attributes; every other look-up falls back to the module.

    ``View(block, norm1=block.norm2)`` is ``block`` with its norm2 where norm1 belongs,
    without modifying the (shared) model.
    """

    def __init__(self, module: Any, **changes: Any) -> None:
        self.__dict__["_module"] = module
        self.__dict__.update(changes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_module"], name)


def passes(check: Callable[..., None], *args: Any) -> None:
    check(*args)


def fails(check: Callable[..., None], *args: Any) -> None:
    with pytest.raises(AssertionError):
        check(*args)
