"""`naf upsample`: the main job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from naf_cli.backbones import get_spec, load_backbone
from naf_cli.cli.errors import handles_errors
from naf_cli.cli.options import Checkpoint, Device, Vfm, VfmWeights, resolve_device
from naf_cli.pipeline import upsample_folder
from naf_cli.upsamplers import UPSAMPLERS, load_upsampler


@handles_errors
def upsample(
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively), or one image.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HDF5 file to write.")],
    vfm: Vfm = "effnet-lite0",
    scale: Annotated[float, typer.Option("--scale", help="Output size = feature grid x scale (16 = input resolution for patch 16).")] = 16.0,
    upsampler: Annotated[str, typer.Option("--upsampler", help=f"One of: {', '.join(UPSAMPLERS)}.")] = "naf",
    checkpoint: Checkpoint = None,
    vfm_weights: VfmWeights = None,
    long_side: Annotated[int, typer.Option("--long-side", help="Long side of the backbone input in pixels (rounded to the patch size).")] = 448,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Upsample the backbone features of every image in a folder into one HDF5 file."""
    stderr = Console(stderr=True)
    get_spec(vfm)  # unknown names fail before anything is loaded
    device = resolve_device(device)
    up, up_info = load_upsampler(upsampler, checkpoint, device)
    backbone = load_backbone(vfm, vfm_weights, device)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(f"{vfm} + {upsampler} x{scale:g}", total=None)
        summary = upsample_folder(
            images, output, backbone, up, up_info, scale, long_side, overwrite,
            on_start=lambda n: progress.update(task, total=n),
            on_image=lambda path: progress.advance(task),
            on_failure=lambda path, err: progress.console.print(f"warning: skipped {err}", markup=False, highlight=False),
        )
    print(f"wrote {summary.written} images to {summary.output}")
    if summary.failed:
        print(f"error: {len(summary.failed)} image(s) could not be read and were skipped "
              f"(listed in the file's failed_images attribute); fix: re-encode or remove them", file=sys.stderr)
        raise typer.Exit(1)
