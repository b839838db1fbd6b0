"""Errors that the CLI turns into one-line messages (exit code 1), and the syntax they use.

A message that tells the user what to type says it the way they are working: in Python
syntax (``weights="DIR/model.safetensors"``) by default, in command-line syntax
(``--weights DIR/model.safetensors``) inside :func:`command_line_messages`, which the CLI
wraps around every command.
"""
from __future__ import annotations

import shlex
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_COMMAND_LINE: ContextVar[bool] = ContextVar("vit_inspect_command_line", default=False)


class VitInspectError(Exception):
    """Base class: a problem with the user's input, stated in one line."""


class WeightsError(VitInspectError):
    """Weights could not be resolved or do not fit the model."""


class ImageError(VitInspectError):
    """An image file is missing, unreadable, truncated or too large."""


@contextmanager
def command_line_messages() -> Iterator[None]:
    """Inside this block, messages name options (``--weights PATH``) instead of arguments."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def weights_argument(value: str) -> str:
    """How to pass ``value`` as the weights: ``--weights VALUE`` or ``weights="VALUE"``."""
    return f"--weights {shlex.quote(value)}" if _COMMAND_LINE.get() else f'weights="{value}"'
