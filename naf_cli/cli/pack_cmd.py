"""`naf pack`: a run's index and shards copied into one self-contained HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from naf_cli.cli.options import Output


def pack(
    index: Annotated[Path, typer.Argument(help="The -o file of naf extract, naf upsample or naf merge.", show_default=False)],
    output: Output,
    incomplete: Annotated[bool, typer.Option("--incomplete", help="Pack an unfinished run's images (the file keeps saying it is incomplete).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o file (once the new one is written and verified).")] = False,
) -> None:
    """Copy a run's features into one file to hand on: the same /features/<name> datasets, no
    links and no shards folder, the run's attributes kept; read back and compared before it is
    given its name.

    Pack to hand results on or open them in tools that do not follow external links; keep the
    shards for millions of images, where resuming and splitting the run are the point.
    """
    from naf_cli.cli.progress import make_progress
    from naf_cli.pipeline.hdf5.pack import pack as pack_file
    from naf_cli.pipeline.memory import human_bytes

    result = pack_file(index, output, make_progress(), incomplete=incomplete, overwrite=overwrite)
    state = {True: "", False: " (an incomplete run: naf info lists what is missing)",
             None: " (not written by naf-cli: packed as it is)"}[result.complete]
    print(f"packed {result.images} image(s) into {result.output} ({human_bytes(result.bytes_written)}), verified{state}")
    if result.left_out:
        import sys

        from naf_cli.cli.errors import EXIT_SKIPPED

        print(f"warning: {len(result.left_out)} damaged image(s) left out (named above); the packed file says it is "
              f"incomplete", file=sys.stderr)
        raise typer.Exit(EXIT_SKIPPED)
