"""What `naf extract` and `naf upsample` share on the CLI side: run the job their options
describe (``naf_cli.pipeline.job``, where every check and the pipeline live), then report
it: the summary table, the lines of a split run, and the exit code."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

from naf_cli.cli.errors import EXIT_OK, EXIT_SKIPPED

if TYPE_CHECKING:
    from naf_cli.pipeline.job import JobSpec
    from naf_cli.pipeline.run import RunSummary


def command_line() -> str:
    return shlex.join(["naf", *sys.argv[1:]])


def run_and_report(spec: JobSpec) -> int:
    """Run ``spec`` with the CLI's progress; returns the exit code (0, or 3 with skipped inputs)."""
    from naf_cli.cli.progress import make_progress
    from naf_cli.pipeline.distributed import torchrun_rank
    from naf_cli.pipeline.job import run_job

    summary = run_job(spec, make_progress())
    partition = summary.partition
    rank = torchrun_rank()
    if rank is None or rank.rank == 0:
        _print_summary(summary)
    resumed = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    part = "" if partition.is_whole else f"part {partition.label}: "
    print(f"{part}wrote {summary.done} image(s) to {summary.output}{resumed}")
    status = summary.status
    if not partition.is_whole and status is not None:
        if status.complete:
            print(f"{summary.output} is complete: all {status.parts_total} parts finished")
        else:
            print(f"{summary.output}: {len(status.parts_finished)} of {status.parts_total} parts finished; waiting for "
                  f"{', '.join(status.pending_parts) or '-'} (the run is complete when every part has finished, into "
                  f"this output, or into their own outputs joined with naf merge)")
        if status.problem:
            print(f"warning: {summary.output} cannot be complete: {status.problem}", file=sys.stderr)
    if summary.skipped:
        print(f"warning: {len(summary.skipped)} of {summary.total} input(s) skipped (named above, and in the "
              f"file's skipped_images and skipped_reasons attributes)", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


def _print_summary(summary: RunSummary) -> None:
    from rich.table import Table

    from naf_cli.cli.progress import stderr_console
    from naf_cli.pipeline.memory import gib

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    earlier = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    table.add_row("done", f"{summary.done} of {summary.total}{earlier}")
    table.add_row("skipped", str(len(summary.skipped)))
    rate = f" ({summary.images_per_second:.2f} images/s)" if summary.done else " (nothing left to compute)"
    table.add_row("time", f"{summary.seconds:.1f} s{rate}")
    table.add_row("model busy", f"{100 * summary.busy_fraction:.0f}% (compute {summary.compute_seconds:.1f} s; decode "
                                f"{summary.decode_seconds:.1f} s and write {summary.write_seconds:.1f} s overlapped)")
    table.add_row("peak memory", gib(summary.peak_memory_bytes))
    stderr_console().print(table)
