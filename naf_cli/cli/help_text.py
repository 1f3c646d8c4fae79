"""Help as users should read it: flags shown as flags, prose wrapped between words.

Docstrings are wrapped at 120 columns in the source; Typer's Rich help keeps their line breaks,
so a paragraph would break mid-sentence at the terminal's width. Flags (``--overwrite``) take no
value, yet Typer 0.2x shows them as ``<bool>``. Both are fixed on the click objects, once, before
the help is drawn, whichever Typer release is installed.
"""

from __future__ import annotations

import inspect
from typing import Any


def flowed(text: str | None) -> str | None:
    """Each paragraph on one line; blank lines between paragraphs kept; ``\\b`` blocks (click's
    "do not rewrap" marker) left as they are."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def tidy_help(command: Any) -> None:
    """Flow the help of ``command`` and of every subcommand; show flags without a value."""
    command.help = flowed(command.help)
    if getattr(command, "short_help", None):
        command.short_help = flowed(command.short_help)
    for param in getattr(command, "params", ()):
        _show_as_flag(param)
    original = getattr(command, "get_help_option", None)
    if original is not None and not getattr(original, "tidied", False):
        # click makes --help on demand, outside ``params``
        def help_option(ctx: Any) -> Any:
            option = original(ctx)
            _show_as_flag(option)
            return option

        help_option.tidied = True  # type: ignore[attr-defined]
        command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)


def _show_as_flag(param: Any) -> None:
    if param is not None and getattr(param, "is_flag", False) and not getattr(param, "count", False):
        param.metavar = ""
