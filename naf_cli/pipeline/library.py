"""The pipeline from Python: one image, or a whole folder into an HDF5 file."""

from __future__ import annotations

from pathlib import Path

import torch

from naf_cli.backbones import Backbone
from naf_cli.modeling import Upsampler
from naf_cli.pipeline.banded import as_tensor
from naf_cli.pipeline.h5out import HDF5FeatureSink
from naf_cli.pipeline.progress import Progress
from naf_cli.pipeline.run import RunSummary, run_pipeline
from naf_cli.pipeline.sizes import OutputSize
from naf_cli.pipeline.sources import ImageSource
from naf_cli.pipeline.transforms import ExtractAndUpsample, ExtractFeatures, UpsampleFeatures
from naf_cli.upsamplers import UpsamplerInfo


def upsample_image(
    image: torch.Tensor, backbone: Backbone, upsampler: Upsampler, scale: float = 16.0, long_side: int = 448,
    output_size: OutputSize | None = None,
) -> tuple[torch.Tensor, dict]:
    """Features of one image [3, H_img, W_img] in [0, 1], upsampled: ([C, H, W], sizes).

    The size is the feature grid times ``scale``, unless ``output_size`` says otherwise.
    """
    from naf_cli.images import DecodedImage

    rule = output_size or OutputSize("grid", scale)
    transform = ExtractAndUpsample(ExtractFeatures(backbone, long_side), UpsampleFeatures(upsampler, None, rule))
    result = transform(DecodedImage(image))
    return as_tensor(result.features), dict(result.attrs)


def upsample_folder(
    images: Path, output: Path, backbone: Backbone, upsampler: Upsampler, upsampler_info: UpsamplerInfo,
    scale: float = 16.0, long_side: int = 448, overwrite: bool = False, output_size: OutputSize | None = None,
    progress: Progress | None = None, strict: bool = False,
) -> RunSummary:
    """Upsample the backbone features of every image under ``images`` into the HDF5 file ``output``.

    Inputs that cannot be decoded are skipped, named through ``progress`` and recorded in the file.
    """
    sink = HDF5FeatureSink(Path(output), overwrite)
    source = ImageSource([Path(images)])
    upsampler.check_channels(backbone.info.channels)  # before any output exists
    rule = output_size or OutputSize("grid", scale)
    transform = ExtractAndUpsample(ExtractFeatures(backbone, long_side), UpsampleFeatures(upsampler, upsampler_info, rule))
    return run_pipeline(source, transform, sink, progress, strict)


def extract_folder(
    images: Path, output: Path, backbone: Backbone, long_side: int = 448, overwrite: bool = False,
    progress: Progress | None = None, strict: bool = False,
) -> RunSummary:
    """The backbone's low-resolution features of every image under ``images``, into ``output``."""
    sink = HDF5FeatureSink(Path(output), overwrite)
    return run_pipeline(ImageSource([Path(images)]), ExtractFeatures(backbone, long_side), sink, progress, strict)
