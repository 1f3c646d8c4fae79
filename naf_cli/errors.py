"""Errors the library raises for bad input; the CLI turns each into one line on stderr."""

from __future__ import annotations


class NafError(Exception):
    """An error a user can fix. ``str(err)`` says what went wrong and how to fix it."""


class ShapeError(NafError, ValueError):
    """Tensors of the wrong shape, or channel counts the model cannot split into heads."""


class UnknownNameError(NafError, KeyError):
    """A registry name that does not exist; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(NafError):
    """Weights that are missing, gated, unreachable or do not fit the model."""


class ImageReadError(NafError):
    """An image file that cannot be read or decoded."""


class OutputError(NafError):
    """An output file that cannot be written, or that exists and would be overwritten."""
