"""Errors that the CLI turns into one-line messages (exit code 1), and the syntax they use.

A message that tells the user what to type says it the way they are working: in Python
syntax (``weights="DIR/model.safetensors"``) by default, in command-line syntax
(``--weights DIR/model.safetensors``) inside :func:`command_line_messages`, which the CLI
wraps around every command. A message about an argument names it with
:func:`named_argument` (``dataset="x"`` in Python, ``--dataset x`` on the command line).
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


def named_argument(name: str, value: str) -> str:
    """How to pass ``value`` for ``name``: ``--name VALUE`` on the command line, ``name="VALUE"`` in Python."""
    return f"--{name.replace('_', '-')} {shlex.quote(value)}" if _COMMAND_LINE.get() else f'{name}="{value}"'


def weights_argument(value: str) -> str:
    """How to pass ``value`` as the weights: ``--weights VALUE`` or ``weights="VALUE"``."""
    return named_argument("weights", value)
