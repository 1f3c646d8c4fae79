"""`naf denoise`: NAF's restoration variant on image files and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from naf_cli.cli.options import Device, FilesFrom, Glob, Strict, Workers
from naf_cli.defaults import DEFAULT_DENOISER


def denoise(
    inputs: Annotated[Optional[list[Path]], typer.Argument(
        help="Noisy image files and folders (searched recursively).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Output file (one input) or folder; default: NAME.denoised.EXT beside each input.",
        show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(
        "--checkpoint", help=f"Denoising weights: {DEFAULT_DENOISER} (Gaussian, salt-and-pepper and both; see `naf models`), "
        "a file (naf train --task denoise) or a URL.")] = DEFAULT_DENOISER,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (otherwise they are kept).")] = False,
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", help="Quality of JPEG outputs (1-100).")] = 95,
    max_memory: Annotated[Optional[str], typer.Option(
        "--max-memory", help="Memory one image may use, e.g. 4G (default: what is available); larger images are "
        "restored in bands of rows (same result).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Images of one size restored together \\[default: 8 on CUDA, else 1].", show_default=False)] = None,
    glob: Glob = None,
    files_from: FilesFrom = None,
    strict: Strict = False,
    device: Device = "auto",
    workers: Workers = None,
) -> None:
    """Remove noise from photos with NAF's image-restoration variant.

    Output keeps the input's format, size, bit depth (8 or 16), greyscale or colour, alpha
    and EXIF (orientation applied and reset); formats naf cannot write (e.g. WebP) become
    PNG. Any size: large images are processed in bands of rows with the same result.
    """
    import sys

    import torch

    from naf_cli.checkpoints import load_denoiser
    from naf_cli.cli.errors import EXIT_OK, EXIT_SKIPPED
    from naf_cli.cli.progress import make_progress
    from naf_cli.devices import resolve_device
    from naf_cli.errors import OptionError
    from naf_cli.pipeline.memory import available_bytes, parse_bytes
    from naf_cli.pipeline.restore import denoise_files
    from naf_cli.pipeline.sources import ImageSource

    if batch_size is not None and batch_size < 1:
        raise OptionError(f"--batch-size {batch_size} must be at least 1; fix: --batch-size 1")
    if workers is not None and workers < 0:
        raise OptionError(f"--workers must be 0 or more, got {workers}; fix: e.g. --workers 2, or 0 to decode in the main process")
    if not 1 <= jpeg_quality <= 100:
        raise OptionError(f"--jpeg-quality {jpeg_quality} is out of range; fix: use 1 to 100")
    source = ImageSource(list(inputs or []), list(glob or []), files_from)
    if output is not None and output.exists() and not output.is_dir() and len(source) > 1:
        raise OptionError(f"-o {output} is a file but there are {len(source)} inputs; fix: pass a folder to -o")
    torch_device = torch.device(resolve_device(device))
    denoiser = load_denoiser(checkpoint, device=torch_device)
    budget = parse_bytes(max_memory) or available_bytes(torch_device) // 2
    summary, sink = denoise_files(
        denoiser, source, output, torch_device, make_progress(), budget, overwrite, strict, jpeg_quality,
        on_written=lambda path: print(path, flush=True), batch_size=batch_size or (8 if torch_device.type == "cuda" else 1),
        workers=workers,
    )
    rate = summary.seconds / sink.megapixels if sink.megapixels else 0.0
    print(f"denoised {summary.done} image(s) in {summary.seconds:.1f} s ({rate:.2f} s per megapixel); "
          f"{summary.resumed} kept, {len(summary.skipped)} skipped", file=sys.stderr)
    raise typer.Exit(EXIT_SKIPPED if summary.skipped else EXIT_OK)
