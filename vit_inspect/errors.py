"""Errors that the CLI turns into one-line messages (exit code 1)."""


class VitInspectError(Exception):
    """Base class: a problem with the user's input, stated in one line."""


class WeightsError(VitInspectError):
    """Weights could not be resolved or do not fit the model."""


class ImageError(VitInspectError):
    """An image file is missing, unreadable, truncated or too large."""
