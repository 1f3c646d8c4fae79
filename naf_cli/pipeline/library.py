"""The pipeline from Python: one image, or a whole folder into an HDF5 file."""

from __future__ import annotations

from pathlib import Path

import torch

from naf_cli.backbones import Backbone
from naf_cli.modeling import Upsampler
from naf_cli.pipeline.job import JobSpec, LoadedModels, UpsampleSpec, run_job
from naf_cli.pipeline.run import RunSummary
from naf_cli.pipeline.seams import Progress
from naf_cli.pipeline.sizes import OutputSize
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
    return result.features.tensor(), dict(result.attrs)


def upsample_folder(
    images: Path, output: Path, backbone: Backbone, upsampler: Upsampler, upsampler_info: UpsamplerInfo,
    scale: float = 16.0, long_side: int = 448, overwrite: bool = False, output_size: OutputSize | None = None,
    progress: Progress | None = None, strict: bool = False, workers: int | None = None, batch_size: int = 1,
    pca: int | None = None,
) -> RunSummary:
    """Upsample the backbone features of every image under ``images`` into the HDF5 file ``output``.

    The job of ``naf upsample`` (``naf_cli.pipeline.job``: the same checks, workers and
    batching: ``workers``, ``batch_size``; ``pca``: K components stored, as ``--pca``) with these models, on their device. Inputs that
    cannot be decoded are skipped, named through ``progress`` and recorded in the file. Under
    torchrun every rank does the whole job (the commands split it over the ranks).
    """
    text, rule_scale = _output_size_option(output_size or OutputSize("grid", scale))
    spec = JobSpec(inputs=[Path(images)], output=Path(output), long_side=long_side, overwrite=overwrite, strict=strict,
                   workers=workers, batch_size=batch_size, torchrun=False, upsample=UpsampleSpec(output_size=text, scale=rule_scale, pca=pca))
    return run_job(spec, progress, LoadedModels(backbone, upsampler, upsampler_info))


def extract_folder(
    images: Path, output: Path, backbone: Backbone, long_side: int = 448, overwrite: bool = False,
    progress: Progress | None = None, strict: bool = False, workers: int | None = None, batch_size: int = 1,
) -> RunSummary:
    """The backbone's low-resolution features of every image under ``images``, into ``output``
    (the job of ``naf extract`` with this backbone)."""
    spec = JobSpec(inputs=[Path(images)], output=Path(output), long_side=long_side, overwrite=overwrite, strict=strict,
                   workers=workers, batch_size=batch_size, torchrun=False)
    return run_job(spec, progress, LoadedModels(backbone))


def _output_size_option(rule: OutputSize) -> tuple[str, float | None]:
    """An ``OutputSize`` as ``--output-size`` and ``--scale`` spell it."""
    if rule.mode == "grid":
        return "grid", rule.scale
    if rule.mode == "image":
        return "image", None
    return f"{rule.fixed[0]}x{rule.fixed[1]}", None
