"""`naf merge`: the outputs of `--shard I/N` runs tied into one file, without copying features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from naf_cli.cli.options import Output, Overwrite


def merge(
    parts: Annotated[list[Path], typer.Argument(help="Outputs (-o files) of the parts of one run, in any order.", show_default=False)],
    output: Output,
    overwrite: Overwrite = False,
) -> None:
    """Tie the outputs of one run's parts into one file users open (links, no copy); rerun it any time.

    Safe while parts still run: the file then says which parts are pending (exit 1), and
    merging again once they finish completes it.
    """
    import sys

    from naf_cli.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED
    from naf_cli.cli.feature_job import command_line
    from naf_cli.pipeline.hdf5.merge import merge_outputs

    result = merge_outputs(parts, output, command_line(), overwrite)
    status = result.status
    print(f"merged {len(result.folders)} output(s) into {result.output}: {result.images} image(s), {status.inputs} input(s), "
          f"{len(status.parts_finished)} of {status.parts_total} part(s) finished")
    if result.duplicates:
        print(f"note: {result.duplicates} image(s) were in more than one output (overlapping runs); the first output's "
              f"copy is linked", file=sys.stderr)
    if not status.complete:
        why = status.problem or f"waiting for part(s) {', '.join(status.pending_parts)}"
        pending = max(0, status.inputs - result.images - len(status.skipped))
        print(f"error: {result.output} is not complete: {why} ({pending} image(s) pending); fix: run or resume the "
              f"missing parts, then run this naf merge again", file=sys.stderr)
        raise typer.Exit(EXIT_FAILED)
    if status.skipped:
        print(f"warning: {len(status.skipped)} input(s) were skipped by the parts (listed in the file's skipped_images and "
              f"skipped_reasons attributes)", file=sys.stderr)
        raise typer.Exit(EXIT_SKIPPED)
    raise typer.Exit(EXIT_OK)
