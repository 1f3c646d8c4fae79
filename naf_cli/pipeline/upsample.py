"""Stream a folder of images through a backbone and an upsampler into an HDF5 file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import naf_cli
from naf_cli.backbones import Backbone
from naf_cli.errors import ImageReadError, NafError
from naf_cli.images import list_images, load_image
from naf_cli.modeling import NAF
from naf_cli.pipeline.h5out import FeatureFile, as_attr
from naf_cli.pipeline.sizes import backbone_input_size, output_size
from naf_cli.upsamplers import UpsamplerInfo


@dataclass
class UpsampleSummary:
    """What a run did: the file written, how many images, and the ones that failed."""

    output: Path
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] or [B, 3, H, W] in [0, 1] -> size, antialiased when shrinking."""
    batched = image if image.ndim == 4 else image[None]
    if tuple(batched.shape[-2:]) == tuple(size):
        return batched
    return F.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


@torch.inference_mode()
def upsample_image(
    image: torch.Tensor, backbone: Backbone, upsampler: nn.Module, scale: float, long_side: int = 448
) -> tuple[torch.Tensor, dict]:
    """Features of one image [3, H_img, W_img] upsampled ``scale`` times: ([C, H, W], sizes).

    The backbone sees the image with its long side at ``long_side`` (sides rounded to the
    patch size). The guidance image is the photo at the output size (the original when it
    is smaller).
    """
    device = next(iter(backbone.buffers())).device
    image = image.to(device)
    in_size = backbone_input_size(tuple(image.shape[-2:]), backbone.info.patch_size, long_side)
    features = backbone(resize(image, in_size))
    out_size = output_size(tuple(features.shape[-2:]), scale)
    if image.shape[-2] * image.shape[-1] > out_size[0] * out_size[1]:
        guidance = resize(image, out_size)
    else:
        guidance = image[None]
    upsampled = upsampler(guidance, features, out_size)[0]
    sizes = {"backbone_input_size": in_size, "feature_size": tuple(features.shape[-2:]), "output_size": out_size}
    return upsampled, sizes


def upsample_folder(
    images: Path,
    output: Path,
    backbone: Backbone,
    upsampler: nn.Module,
    upsampler_info: UpsamplerInfo,
    scale: float,
    long_side: int = 448,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[Path], None] | None = None,
    on_failure: Callable[[Path, str], None] | None = None,
) -> UpsampleSummary:
    """Upsample the features of every image under ``images`` into ``output``.

    An image that cannot be read is reported through ``on_failure``, listed in the file's
    ``failed_images`` attribute and skipped; the rest are written.
    """
    images = Path(images)
    paths = list_images(images)
    if not paths:
        raise NafError(f"no images found in {images}; fix: pass a folder with .jpg/.png/... files")
    if scale <= 0:
        raise NafError(f"--scale must be positive, got {scale}")
    root = images if images.is_dir() else images.parent
    info = backbone.info
    if isinstance(upsampler, NAF):
        upsampler.check_channels(info.channels)  # fail before any output exists
    attrs = {
        "producer": f"naf-cli {naf_cli.__version__}",
        "backbone": info.name, "backbone_timm": info.timm_name, "backbone_weights": info.weights,
        "patch_size": info.patch_size, "channels": info.channels,
        "upsampler": upsampler_info.name, "checkpoint": upsampler_info.checkpoint,
        "checkpoint_sha256": upsampler_info.checkpoint_sha256,
        "scale": float(scale), "long_side": long_side, "source_folder": str(images.resolve()),
    }
    summary = UpsampleSummary(Path(output))
    if on_start:
        on_start(len(paths))
    with FeatureFile(Path(output), attrs, overwrite) as out:
        for path in paths:
            name = path.relative_to(root).as_posix()
            try:
                image = load_image(path)
            except ImageReadError as err:
                summary.failed.append((name, str(err)))
                if on_failure:
                    on_failure(path, str(err))
                if on_image:
                    on_image(path)
                continue
            features, sizes = upsample_image(image, backbone, upsampler, scale, long_side)
            out.write(name, features, {
                "source_image": name, "source_size": as_attr(tuple(image.shape[-2:])),
                **{key: as_attr(value) for key, value in sizes.items()},
            })
            summary.written += 1
            if on_image:
                on_image(path)
        out.record_failures(summary.failed)
    return summary
