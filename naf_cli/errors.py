"""Errors the library raises for bad input; the CLI turns each into one line on stderr and
an exit code (``naf_cli.cli.errors``: the one place that decides them)."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """An exception's first line (HDF5's run to many), or its type when it says nothing."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class NafError(Exception):
    """An error a user can fix. ``str(err)`` says what went wrong and how to fix it."""


class OptionError(NafError, ValueError):
    """An option value that cannot work (not finite, not positive, too large for memory...)."""


class ShapeError(NafError, ValueError):
    """Tensors of the wrong shape, or channel counts the model cannot split into heads."""


class UnknownNameError(NafError, KeyError):
    """A registry name that does not exist; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(NafError):
    """Weights that are missing, gated, unreachable or do not fit the model."""


class ImageReadError(NafError):
    """An input file that cannot be read or decoded as an image; the pipeline skips it."""


class InputSkipped(NafError):
    """An input that decodes but cannot be processed (e.g. its output would not fit in memory)."""


class OutputError(NafError):
    """An output file that cannot be created, or that exists and would be overwritten."""


class RunError(NafError):
    """A run that failed after work started (disk full, ``--strict`` stop)."""


class DamagedOutput(NafError):
    """An output that holds unreadable or foreign data, or is not complete (``naf info``, ``naf verify``)."""
