"""Denoising image files: decode, restore (whole or in bands), write in the input's format.

Greyscale images are restored as RGB and averaged back to one channel; alpha is kept as
it was; EXIF orientation is applied on reading and the tag dropped (``images.py``), the
rest of the EXIF block is written back. 16-bit sources are written at 16 bits. Images
whose whole-image encoder would not fit ``max_bytes`` go through the banded path
(``modeling/restoration_tiles.py``), which gives the same result within float rounding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from naf_cli.disk import check_writable, write_failure
from naf_cli.errors import ImageReadError, OutputError, RunError
from naf_cli.images import DecodedImage, read_image
from naf_cli.modeling.restoration import Denoiser
from naf_cli.modeling.restoration_tiles import denoise_in_tiles, whole_image_bytes
from naf_cli.pipeline.image_sink import FORMATS, write_image
from naf_cli.pipeline.progress import Progress
from naf_cli.pipeline.sources import ImageSource, InputItem

DENOISED_TAG = ".denoised"
FALLBACK_SUFFIX = ".png"


def restore(denoiser: Denoiser, pixels: torch.Tensor, device: torch.device, max_bytes: int) -> torch.Tensor:
    """[C, H, W] in [0, 1] (C = 1, 3 or 4) -> the restored pixels, same shape, on the CPU."""
    return restore_batch(denoiser, [pixels], device, max_bytes)[0]


def restore_batch(
    denoiser: Denoiser, images: Sequence[torch.Tensor], device: torch.device, max_bytes: int,
) -> list[torch.Tensor]:
    """Images of one size, [C_i, H, W] in [0, 1] (C_i = 1, 3 or 4), restored in one batch when the
    batch fits ``max_bytes`` whole, else one by one (in bands when one does not fit): each
    result has its input's shape, on the CPU, and equals the image restored alone."""
    height, width = images[0].shape[-2:]
    if any(image.shape[-2:] != (height, width) for image in images):
        raise ValueError("restore_batch takes images of one size")
    whole = whole_image_bytes(denoiser, (height, width), batch=len(images)) <= max_bytes
    if not whole and len(images) > 1:
        return [restore_batch(denoiser, [image], device, max_bytes)[0] for image in images]
    noisy = torch.stack([image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3] for image in images]).to(device)
    bands = denoiser.forward_bands(noisy) if whole else denoise_in_tiles(denoiser, noisy, max_bytes=max_bytes)
    out = torch.empty(len(images), 3, height, width)
    with torch.no_grad():
        for r0, r1, rows in bands:
            out[:, :, r0:r1] = rows.float().cpu()
    results = []
    for restored, image in zip(out, images, strict=True):
        if image.shape[0] == 1:
            restored = restored.mean(0, keepdim=True)
        elif image.shape[0] == 4:
            restored = torch.cat((restored, image[3:].cpu()))
        results.append(restored)
    return results


def output_path(item: InputItem, output: Path | None, single_file: bool) -> Path:
    """Where an input's result goes: beside it as ``NAME.denoised.EXT`` without ``output``; ``output``
    itself for a single input given a file name with an image suffix; else ``output/NAME``. Inputs in
    formats that cannot be written (e.g. WebP) are written as PNG."""
    suffix = item.path.suffix if item.path.suffix.lower() in FORMATS else FALLBACK_SUFFIX
    if output is None:
        return item.path.with_name(item.path.stem + DENOISED_TAG + suffix)
    if single_file and output.suffix.lower() in FORMATS:
        return output
    return (output / item.name).with_suffix(suffix)


def is_denoised_output(path: Path) -> bool:
    """A file this command wrote beside its input (not taken as an input again)."""
    return path.stem.endswith(DENOISED_TAG)


@dataclass
class DenoiseSummary:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    megapixels: float = 0.0


def denoise_files(
    denoiser: Denoiser, source: ImageSource, output: Path | None, device: torch.device, progress: Progress,
    max_bytes: int, overwrite: bool = False, strict: bool = False, jpeg_quality: int = 95,
    on_written: Callable[[Path], None] | None = None, batch_size: int = 1,
) -> DenoiseSummary:
    """Restore every input of ``source``; bad inputs are named and skipped (``strict``: stop).

    Consecutive inputs of one size are restored together, up to ``batch_size`` (for GPUs).
    An existing output is kept unless ``overwrite`` (a rerun finishes an interrupted folder).
    Write errors (a full disk) stop the run: every file written so far is complete.
    """
    items = [item for item in source if not (output is None and is_denoised_output(item.path))]
    single = len(items) == 1 and len(source.items) == 1 and not source.items[0].path.is_dir()
    if output is not None and single and output.suffix.lower() in FORMATS and output.is_dir():
        raise OutputError(f"{output} is a folder; fix: pass a file name, or a folder without an image suffix")
    if output is not None and output.exists() and not output.is_dir() and not (single and output.suffix.lower() in FORMATS):
        raise OutputError(f"-o {output} is an existing file, and the results need a folder; fix: choose a folder name "
                          f"for -o (it is created)")
    for folder in sorted({output_path(item, output, single).parent for item in items}):
        check_writable(folder)
    summary = DenoiseSummary()
    started = time.perf_counter()
    pending: list[tuple[InputItem, Path, DecodedImage]] = []

    def flush() -> None:
        restored = restore_batch(denoiser, [decoded.pixels for _, _, decoded in pending], device, max_bytes)
        for (item, target, decoded), pixels in zip(pending, restored, strict=True):
            _write(pixels, decoded, target, jpeg_quality)
            summary.written.append(target)
            summary.megapixels += decoded.size[0] * decoded.size[1] / 1e6
            if on_written is not None:
                on_written(target)
            progress.advance(item.name)
        pending.clear()

    progress.start(len(items), "denoising")
    try:
        for item in items:
            target = output_path(item, output, single)
            if target.exists() and os.path.samefile(target, item.path):
                raise OutputError(f"the output for {item.path} is the input itself; fix: choose another -o")
            if target.exists() and not overwrite:
                summary.kept.append(target)
                progress.warn(f"kept {target}: it exists (pass --overwrite to redo it)")
                progress.advance(item.name)
                continue
            try:
                decoded, _ = read_image(item.path)
            except ImageReadError as err:
                if strict:
                    raise RunError(f"{err} (stopped: --strict)") from err
                summary.skipped.append(item.name)
                progress.warn(f"skipped {item.path}: {str(err).removeprefix(f'cannot read {item.path}: ')}")
                progress.advance(item.name)
                continue
            if pending and pending[0][2].pixels.shape[-2:] != decoded.pixels.shape[-2:]:
                flush()
            pending.append((item, target, decoded))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _write(restored: torch.Tensor, decoded: DecodedImage, target: Path, quality: int) -> None:
    bit_depth = decoded.bit_depth
    if target.suffix.lower() in (".jpg", ".jpeg"):
        bit_depth = 8
        if restored.shape[0] == 4:
            raise OutputError(f"cannot write {target}: JPEG holds no alpha; fix: write .png (-o DIR/NAME.png)")
    if target.suffix.lower() in (".tif", ".tiff") and restored.shape[0] != 1:
        bit_depth = 8
    try:
        os.makedirs(target.parent, exist_ok=True)
    except OSError as err:
        raise write_failure(target, err) from err
    write_image(target, restored, bit_depth, decoded.exif, quality)
