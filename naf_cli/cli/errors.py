"""The one place where exceptions become one line on stderr and an exit code.

Exit codes, the same for every command (README "Exit codes"):
0 all done; 3 finished, some inputs skipped; 2 bad usage, options, names, paths or weights
(found before any work); 1 a run that failed; 130 interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

_debug_flag = False


def set_debug(flag: bool) -> None:
    """Set by the top-level ``--debug`` option on every invocation."""
    global _debug_flag
    _debug_flag = flag


def debug_enabled() -> bool:
    return _debug_flag or os.environ.get("NAF_DEBUG", "") not in ("", "0")


def describe(err: BaseException) -> tuple[int, str]:
    """(exit code, the one line for stderr) of an exception that ended a command."""
    from naf_cli.disk import NO_ROOM, NOT_WRITABLE, write_failure
    from naf_cli.errors import DamagedOutput, NafError, RunError

    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "error: interrupted; fix: rerun the same command to go on (finished work is kept)"
    if isinstance(err, NafError):
        # found before any work (options, names, weights, paths): usage; a run that failed once
        # work had started, or an output found damaged: failed
        return EXIT_FAILED if isinstance(err, RunError | DamagedOutput) else EXIT_USAGE, f"error: {err}"
    if isinstance(err, OSError) and err.errno in NO_ROOM + NOT_WRITABLE:
        # a write the library did not wrap (every one it knows of is): still one line with the fix
        return EXIT_FAILED, f"error: {write_failure(Path(err.filename) if err.filename else None, err)}"
    if isinstance(err, MemoryError):
        return EXIT_FAILED, "error: out of memory; fix: a smaller --output-size, --scale or --long-side"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return EXIT_FAILED, f"error: unexpected {type(err).__name__}: {text} (rerun with --debug for the traceback)"
