"""The one place where exceptions become one line on stderr and an exit code."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

import typer

from naf_cli.errors import NafError

F = TypeVar("F", bound=Callable)

EXIT_USER_ERROR = 2
EXIT_UNEXPECTED = 1


_debug_flag = False


def set_debug(flag: bool) -> None:
    """Set by the top-level ``--debug`` option on every invocation."""
    global _debug_flag
    _debug_flag = flag


def debug_enabled() -> bool:
    return _debug_flag or os.environ.get("NAF_DEBUG", "") not in ("", "0")


def handles_errors(command: F) -> F:
    """Run a command; a NafError prints ``error: ...`` and exits 2, anything else exits 1.

    With ``--debug`` (or NAF_DEBUG=1) unexpected errors keep their traceback.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except NafError as err:
            if debug_enabled():
                raise
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("error: interrupted; no output file was published", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception as err:  # the last line of defence: one line unless debugging
            if debug_enabled():
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            print(f"error: unexpected {type(err).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
            raise typer.Exit(EXIT_UNEXPECTED) from None

    return wrapper  # type: ignore[return-value]
