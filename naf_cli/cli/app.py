"""The `naf` command: wires the subcommands, nothing else."""

from __future__ import annotations

from typing import Annotated

import typer

import naf_cli
from naf_cli.cli.errors import set_debug
from naf_cli.cli.info_cmds import env, models
from naf_cli.cli.train_cmd import train
from naf_cli.cli.upsample_cmd import upsample

app = typer.Typer(
    name="naf",
    help="Sharp, full-resolution features from any vision backbone with NAF (Neighborhood Attention Filtering).",
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
) -> None:
    """Sharp, full-resolution features from any vision backbone with NAF."""
    set_debug(debug)


app.command()(upsample)
app.command()(train)
app.command()(env)
app.command()(models)


def run() -> None:
    app()
