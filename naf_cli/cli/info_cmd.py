"""`naf info`: what an HDF5 feature file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SHOWN_DATASETS = 10


def info(
    file: Annotated[Path, typer.Argument(help="HDF5 file written by naf extract or naf upsample.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (every dataset included).")] = False,
) -> None:
    """Summarise a feature file: producer, command, backbone, upsampler, images done and skipped, shapes, size,
    and whether it is complete. Exit code 1 when it is not (the problems and their fixes are listed)."""
    import json

    from naf_cli.cli.errors import EXIT_FAILED
    from naf_cli.pipeline.hdf5.info import describe_feature_file

    summary = describe_feature_file(file)
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _render(summary)
    if summary["complete"] is False:
        raise typer.Exit(EXIT_FAILED)


def _render(summary: dict) -> None:
    from rich.table import Table

    from naf_cli.cli.progress import stdout_console
    from naf_cli.pipeline.memory import human_bytes

    console = stdout_console()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # hashes and paths are folded, never cut
    table.add_row("file", summary["file"])
    table.add_row("size on disk", f"{human_bytes(summary['size_on_disk_bytes'])} ({summary['size_on_disk_bytes']:,} bytes)")
    if summary["complete"] is None:
        table.add_row("complete", "unknown: not written by naf-cli")
    else:
        table.add_row("complete", "yes" if summary["complete"] else "no (problems below)")
    for section in ("run", "backbone", "upsampler"):
        for key, value in summary[section].items():
            table.add_row(key, str(value))
    pca = summary["pca"]
    if pca:
        table.add_row("pca", f"{pca.get('pca_components')} of {pca.get('pca_channels')} channels, "
                             f"{100 * float(pca.get('pca_variance_kept', 0)):.1f}% of the variance (fitted on "
                             f"{pca.get('pca_fit_images')} image(s), seed {pca.get('pca_seed')}"
                             f"{', taken from ' + str(pca['pca_basis_from']) if pca.get('pca_basis_from') else ''}); FeatureFile.reconstruct "
                             f"gives the {pca.get('pca_channels')} channels")
        table.add_row("pca basis sha256", str(pca.get("pca_sha256")))
    images = summary["images"]
    table.add_row("images done", str(images["done"]))
    table.add_row("images skipped", str(images["skipped"]))
    table.add_row("images pending", str(images["pending"]))
    if images["unreadable"]:
        table.add_row("images unreadable", str(images["unreadable"]))
    shapes = summary["shapes"]
    table.add_row("stored channels", ", ".join(map(str, shapes["channels"])) or "-")
    table.add_row("dtypes", ", ".join(shapes["dtypes"]) or "-")
    if shapes["height_range"]:
        (h0, h1), (w0, w1) = shapes["height_range"], shapes["width_range"]
        table.add_row("sizes (HxW)", f"{h0}..{h1} x {w0}..{w1}")
    if shapes["feature_bytes_data"]:
        stored, data = shapes["feature_bytes_stored"], shapes["feature_bytes_data"]
        how = "compressed" if summary["run"].get("compression", "none") != "none" else "chunk padding"
        table.add_row("stored / data", f"{stored / data:.3f} ({human_bytes(stored)} stored for {human_bytes(data)} of "
                                       f"features; {how})")
    console.print(table)
    if summary["problems"]:
        console.print("\n[bold]problems[/bold]")
        for problem in summary["problems"]:
            console.print(f"  {problem['problem']}: {problem['message']}; fix: {problem['fix']}", markup=False)
    if summary["skipped"]:
        console.print("\n[bold]skipped inputs[/bold]")
        for entry in summary["skipped"]:
            console.print(f"  {entry['image']}: {entry['reason']}", markup=False)
    if summary["datasets"]:
        shown = Table("dataset", "shape", "dtype", "stored")
        shown.columns[0].overflow = "fold"
        for dataset in summary["datasets"][:SHOWN_DATASETS]:
            if "problem" in dataset:
                shown.add_row(dataset["name"], "unreadable", "-", "-")
                continue
            shown.add_row(dataset["name"], "x".join(map(str, dataset["shape"])), dataset["dtype"], human_bytes(dataset["bytes_stored"]))
        console.print(shown)
        more = len(summary["datasets"]) - SHOWN_DATASETS
        if more > 0:
            console.print(f"... and {more} more (--json lists every dataset)")
