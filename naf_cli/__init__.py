"""naf-cli: sharp, full-resolution features from any vision backbone with NAF.

Library use, without the CLI::

    from naf_cli import load_backbone, load_naf, load_image, upsample_image
    features, sizes = upsample_image(load_image("cat.jpg"), load_backbone("effnet-lite0"), load_naf(), scale=16)
"""

__version__ = "0.1.0"

from naf_cli.backbones import BACKBONES, Backbone, load_backbone  # noqa: E402
from naf_cli.checkpoints import load_naf, save_naf  # noqa: E402
from naf_cli.errors import NafError  # noqa: E402
from naf_cli.images import list_images, load_image  # noqa: E402
from naf_cli.modeling import NAF, cross_scale_neighborhood_attention  # noqa: E402
from naf_cli.pipeline import upsample_folder, upsample_image  # noqa: E402
from naf_cli.upsamplers import UPSAMPLERS, load_upsampler  # noqa: E402

__all__ = [
    "BACKBONES", "NAF", "UPSAMPLERS", "Backbone", "NafError", "cross_scale_neighborhood_attention",
    "list_images", "load_backbone", "load_image", "load_naf", "load_upsampler", "save_naf",
    "upsample_folder", "upsample_image",
]
