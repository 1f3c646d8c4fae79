"""Denoising image files: decode, restore (whole or in bands), write in the input's format.

Greyscale images are restored as RGB and averaged back to one channel; alpha is kept as
it was; EXIF orientation is applied on reading and the tag dropped (``images.py``), the
rest of the EXIF block is written back. 16-bit sources are written at 16 bits. Images
whose whole-image encoder would not fit ``max_bytes`` go through the banded path
(``modeling/restoration_tiles.py``), which gives the same result within float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from naf_cli.images import DecodedImage
from naf_cli.modeling.restoration import Denoiser
from naf_cli.modeling.restoration_tiles import denoise_in_tiles, whole_image_bytes
from naf_cli.pipeline.feature_map import FeatureMap
from naf_cli.pipeline.image_sink import RestoredImageSink, is_denoised_output
from naf_cli.pipeline.run import RunSummary, run_pipeline
from naf_cli.pipeline.seams import AttrValue, Progress, Result
from naf_cli.pipeline.sources import ImageSource


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


class Restore:
    """The ``Transform`` of ``naf denoise``: decoded images -> their restored pixels [C, H, W] in
    [0, 1] (greyscale, colour and alpha as the input), batched by size. ``max_bytes``: what one
    batch may use; an image that does not fit whole is restored in bands (same result)."""

    kind = "denoise"
    memory_fix = "a smaller --max-memory (an image that does not fit is then restored in bands)"

    def __init__(self, denoiser: Denoiser, device: torch.device, max_bytes: int) -> None:
        self.denoiser = denoiser
        self._device = torch.device(device)
        self.max_bytes = max_bytes

    @property
    def device(self) -> torch.device:
        return self._device

    def file_attrs(self) -> dict[str, AttrValue]:
        return {}

    def file_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def bucket_key(self, image: DecodedImage, name: str) -> Hashable:
        return tuple(int(v) for v in image.pixels.shape[-2:])

    def run_batch(self, images: Sequence[DecodedImage], names: Sequence[str]) -> list[Result]:
        restored = restore_batch(self.denoiser, [image.pixels for image in images], self.device, self.max_bytes)
        return [Result(FeatureMap.held(pixels), {"exif": image.exif}) for pixels, image in zip(restored, images, strict=True)]


def denoise_files(
    denoiser: Denoiser, source: ImageSource, output: Path | None, device: torch.device, progress: Progress | None,
    max_bytes: int, overwrite: bool = False, strict: bool = False, jpeg_quality: int = 95,
    on_written: Callable[[Path], None] | None = None, batch_size: int = 1, workers: int | None = None,
) -> tuple[RunSummary, RestoredImageSink]:
    """Restore every input of ``source`` through the pipeline's run loop (decoding workers,
    the writer thread, batches of one size up to ``batch_size``); bad inputs are named and
    skipped (``strict``: stop). Returns the run's summary (``resumed``: results kept) and the
    sink (the files written, their megapixels). Outputs go where ``RestoredImageSink`` says;
    a rerun keeps the existing ones unless ``overwrite``. A write error (a full disk) stops
    the run: every file written so far is complete.
    """
    items = [item for item in source if not (output is None and is_denoised_output(item.path))]
    single = len(items) == 1 and len(source.items) == 1 and not source.items[0].path.is_dir()
    sink = RestoredImageSink(items, source.root, output, single, overwrite, jpeg_quality, on_written)
    summary = run_pipeline(ImageSource.of(items, source.root), Restore(denoiser, device, max_bytes), sink, progress,
                           strict=strict, description="denoising", workers=workers, batch_size=batch_size)
    return summary, sink
