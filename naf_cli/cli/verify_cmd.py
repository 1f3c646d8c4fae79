"""`naf verify`: read every chunk of a feature file, checksums checked; record what is damaged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def verify(
    file: Annotated[Path, typer.Argument(help="HDF5 file written by naf extract, naf upsample or naf merge.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read every image of a feature file (HDF5 checks each chunk's checksum), name the damaged ones and record
    them beside the run (damaged.json): rerunning the run's command then redoes exactly those images.
    Exit code 1 when anything is damaged, missing or foreign."""
    import json
    import sys

    from naf_cli.cli.errors import EXIT_FAILED
    from naf_cli.cli.progress import make_progress
    from naf_cli.pipeline.hdf5.info import describe_feature_file
    from naf_cli.pipeline.hdf5.verify import redo_hint
    from naf_cli.pipeline.hdf5.verify import verify as verify_file
    from naf_cli.pipeline.memory import human_bytes

    describe_feature_file(file)  # not a feature file, or an index that does not open: one line, before reading
    report = verify_file(file, make_progress())
    if as_json:
        print(json.dumps({
            "file": str(file), "images_checked": report.checked, "bytes_read": report.bytes_read,
            "seconds": round(report.seconds, 3), "damaged": [{"image": n, "file": str(f), "reason": r} for n, f, r in report.damaged],
            "problems": [p.to_json() for p in report.problems], "not_recorded": report.not_recorded,
            "ok": not report.damaged and not report.problems,
        }, indent=2, ensure_ascii=False))
    else:
        for name, shard, reason in report.damaged:
            print(f"damaged: {name} in {shard}: {reason}")
        for problem in report.problems:
            print(f"{problem.kind}: {problem.message}; fix: {problem.fix}")
        rate = report.bytes_read / report.seconds if report.seconds > 0 else 0.0
        print(f"checked {report.checked} image(s), {human_bytes(report.bytes_read)} in {report.seconds:.1f} s "
              f"({human_bytes(int(rate))}/s): {len(report.damaged)} damaged")
        if report.damaged and not report.not_recorded:
            command = describe_feature_file(file)["run"].get("command", "the command that wrote it")
            print(f"recorded in damaged.json beside the shards; fix: {redo_hint(file, report.damaged, command)} to redo them")
    for reason in report.not_recorded:
        print(f"error: {reason}", file=sys.stderr)
    if report.damaged or report.problems:
        raise typer.Exit(EXIT_FAILED)
