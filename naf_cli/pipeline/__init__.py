"""Reading images, running backbone and upsampler, writing HDF5."""

from naf_cli.pipeline.upsample import UpsampleSummary, upsample_folder, upsample_image

__all__ = ["UpsampleSummary", "upsample_folder", "upsample_image"]
