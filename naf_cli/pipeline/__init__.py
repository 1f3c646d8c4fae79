"""The pipeline: a source of images, a transform, a sink (HDF5 features or images)."""

from naf_cli.pipeline.hdf5.sink import HDF5FeatureSink
from naf_cli.pipeline.image_sink import ImageSink, write_image
from naf_cli.pipeline.library import extract_folder, upsample_folder, upsample_image
from naf_cli.pipeline.run import RunSummary, run_pipeline
from naf_cli.pipeline.sizes import OutputSize
from naf_cli.pipeline.sources import ImageSource, InputItem, list_images
from naf_cli.pipeline.transforms import ExtractAndUpsample, ExtractFeatures, UpsampleFeatures, resize

__all__ = [
    "ExtractAndUpsample", "ExtractFeatures", "HDF5FeatureSink", "ImageSink", "ImageSource", "InputItem",
    "OutputSize", "RunSummary", "UpsampleFeatures", "extract_folder", "list_images", "resize", "run_pipeline",
    "upsample_folder", "upsample_image", "write_image",
]
