"""naf-cli: sharp, full-resolution features from any vision backbone with NAF.

Library use, without the CLI::

    from naf_cli import load_backbone, load_naf, load_image, upsample_image
    features, sizes = upsample_image(load_image("cat.jpg"), load_backbone("effnet-lite0"), load_naf(), scale=16)

Names are imported on first use, so ``import naf_cli`` (and ``naf --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "BACKBONES": "naf_cli.backbones", "Backbone": "naf_cli.backbones", "load_backbone": "naf_cli.backbones",
    "load_naf": "naf_cli.checkpoints", "save_naf": "naf_cli.checkpoints", "load_denoiser": "naf_cli.checkpoints",
    "Denoiser": "naf_cli.modeling", "restore": "naf_cli.pipeline.restore",
    "NafError": "naf_cli.errors", "FeatureFile": "naf_cli.features", "merge_outputs": "naf_cli.pipeline.hdf5.merge",
    "DecodedImage": "naf_cli.images", "load_image": "naf_cli.images", "read_image": "naf_cli.images",
    "NAF": "naf_cli.modeling", "Upsampler": "naf_cli.modeling", "cross_scale_neighborhood_attention": "naf_cli.modeling",
    "ImageSource": "naf_cli.pipeline", "OutputSize": "naf_cli.pipeline", "extract_folder": "naf_cli.pipeline",
    "list_images": "naf_cli.pipeline", "run_pipeline": "naf_cli.pipeline", "upsample_folder": "naf_cli.pipeline",
    "upsample_image": "naf_cli.pipeline", "write_image": "naf_cli.pipeline",
    "UPSAMPLERS": "naf_cli.upsamplers", "load_upsampler": "naf_cli.upsamplers",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from naf_cli.backbones import BACKBONES, Backbone, load_backbone
    from naf_cli.checkpoints import load_denoiser, load_naf, save_naf
    from naf_cli.errors import NafError
    from naf_cli.features import FeatureFile
    from naf_cli.images import DecodedImage, load_image, read_image
    from naf_cli.modeling import NAF, Denoiser, Upsampler, cross_scale_neighborhood_attention
    from naf_cli.pipeline import (
        ImageSource,
        OutputSize,
        extract_folder,
        list_images,
        run_pipeline,
        upsample_folder,
        upsample_image,
        write_image,
    )
    from naf_cli.pipeline.hdf5.merge import merge_outputs
    from naf_cli.pipeline.restore import restore
    from naf_cli.upsamplers import UPSAMPLERS, load_upsampler


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'naf_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
