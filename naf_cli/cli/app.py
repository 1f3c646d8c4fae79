"""The `naf` command: wires the subcommands and maps every error once, for all of them.

Nothing heavy is imported here or by the command modules at import time: torch, timm and
h5py load inside command bodies, so ``naf --help`` is instant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import naf_cli
from naf_cli.cli.bench_cmd import bench
from naf_cli.cli.denoise_cmd import denoise
from naf_cli.cli.env_cmds import env, models
from naf_cli.cli.errors import debug_enabled, describe, set_debug
from naf_cli.cli.eval_cmd import eval_
from naf_cli.cli.extract_cmd import extract
from naf_cli.cli.help_text import tidy_help
from naf_cli.cli.info_cmd import info
from naf_cli.cli.merge_cmd import merge
from naf_cli.cli.pack_cmd import pack
from naf_cli.cli.pca_cmd import pca
from naf_cli.cli.train_cmd import train
from naf_cli.cli.upsample_cmd import upsample
from naf_cli.cli.verify_cmd import verify


def _cli_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions that carry their own exit code and message: Typer's (which vendors click
    from 0.2x on), and click's for older Typer releases."""
    passed: list[type[BaseException]] = [typer.Exit, typer.Abort]
    if hasattr(typer, "TyperException"):
        passed.append(typer.TyperException)
    try:
        import click

        passed += [click.exceptions.Exit, click.exceptions.Abort, click.ClickException]
    except ImportError:
        pass
    return tuple(passed)


PASSED_THROUGH = _cli_exceptions()
# the parser's errors: ClickException of the click Typer uses (vendored from Typer 0.2x on)
CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _terminated(signum: int, frame: object) -> None:
    # a scheduler's SIGTERM reaches the whole process group: decoding workers die of it too, and
    # DataLoader's SIGCHLD handler would raise "worker killed by signal" over this interrupt. A
    # Python handler that does nothing (not SIG_DFL: a SIGCHLD already pending would then be
    # reported as "ignored due to race condition") takes its place.
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGCHLD, _child_ended)
    raise KeyboardInterrupt(f"signal {signum}")


def _child_ended(signum: int, frame: object) -> None:
    """SIGCHLD once the run is being stopped: the workers are shut down by the run itself."""


def _install_signal_handlers() -> None:
    """SIGTERM (a scheduler's stop) is handled like Ctrl-C: finished work is kept, resumable.
    SIGXFSZ is ignored so a file-size limit surfaces as a write error with a message."""
    with contextlib.suppress(ValueError, AttributeError):  # not in the main thread, or no such signal
        signal.signal(signal.SIGTERM, _terminated)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# options that take several values after one flag (``--ratio 2 8 16``), per command
GREEDY_OPTIONS: dict[str, tuple[str, ...]] = {
    "bench": ("--ratio", "--upsampler", "--backend"),
    "pca": ("--upsampler", "--components"),
    "eval": ("--factor", "--checkpoint"),
    "train": ("--factor", "--also-vfm", "--validation-factor"),
}


def spread_greedy_options(args: list[str]) -> list[str]:
    """``bench --ratio 2 8 16`` -> ``bench --ratio 2 --ratio 8 --ratio 16`` (click options take one
    value per flag). Values run until the next token that starts with ``-``; ``--`` ends them."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    greedy = GREEDY_OPTIONS.get(command or "", ())
    spread: list[str] = []
    current: str | None = None
    for arg in args:
        if arg.startswith("-"):
            current = arg if arg in greedy else None
            if arg == "--":
                current = None
            spread.append(arg)
        elif current is not None and spread[-1] != current:
            spread += [current, arg]
        else:
            spread.append(arg)
    return spread


class NafGroup(TyperGroup):
    """Runs a subcommand; any exception it raises becomes one line on stderr and an exit code,
    usage errors the parser finds included (the same ``error: ...; fix: ...`` line, exit 2)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_greedy_options(list(args)))

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,  # type: ignore[override]
             standalone_mode: bool = True, **extra: Any) -> Any:
        tidy_help(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        except CLICK_ERROR as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `naf` alone: the help, as Typer shows it
                context = getattr(err, "ctx", None)
                print(context.get_help() if context is not None else "", file=sys.stderr)
            else:
                print(usage_line(err), file=sys.stderr, flush=True)
            sys.exit(getattr(err, "exit_code", 2))
        sys.exit(code if isinstance(code, int) else 0)


    def invoke(self, ctx: Any) -> Any:
        _install_signal_handlers()
        try:
            return super().invoke(ctx)
        except PASSED_THROUGH:
            raise
        except BrokenPipeError:
            # stdout was closed by its reader (`naf bench | head`): stop quietly, as a pipe expects
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except (Exception, KeyboardInterrupt) as err:
            if debug_enabled():
                raise
            code, line = describe(err)
            print(line, file=sys.stderr, flush=True)
            raise typer.Exit(code) from None


def usage_line(err: BaseException) -> str:
    """One line for an error the parser found: what, and where the options are described."""
    format_message = getattr(err, "format_message", None)
    message = (format_message() if callable(format_message) else str(err)).strip().replace("\n", " ")
    context = getattr(err, "ctx", None)
    where = context.command_path if context is not None else "naf"
    return f"error: {message.rstrip('.')}; fix: see {where} --help"


app = typer.Typer(
    name="naf",
    cls=NafGroup,
    help="Sharp, full-resolution features from any vision backbone with NAF (Neighborhood Attention Filtering).",
    epilog="Exit codes: 0 done; 3 done, some inputs skipped; 2 bad usage or input, found before any work; "
    "1 the run failed; 130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"naf-cli {naf_cli.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Sharp, full-resolution features from any vision backbone with NAF."""
    set_debug(debug)
    from naf_cli.allocator import keep_freed_memory

    keep_freed_memory()


app.command()(extract)
app.command()(upsample)
app.command()(denoise)
app.command()(info)
app.command()(verify)
app.command()(merge)
app.command()(pack)
app.command("eval")(eval_)
app.command()(train)
app.command()(bench)
app.command()(pca)
app.command()(env)
app.command()(models)


def run() -> None:
    app()
