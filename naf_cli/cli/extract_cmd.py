"""`naf extract`: the backbone's low-resolution features of every image, into one HDF5 file."""

from __future__ import annotations

import typer

from naf_cli.cli.feature_job import command_line, run_and_report
from naf_cli.cli.options import (
    BackbonePrecision,
    BatchSize,
    Compression,
    Device,
    FilesFrom,
    Glob,
    Inputs,
    Layer,
    LongSide,
    OutDtype,
    Output,
    Overwrite,
    Shard,
    ShardImages,
    Strict,
    Vfm,
    VfmWeights,
    Workers,
)
from naf_cli.defaults import DEFAULT_VFM


def extract(
    output: Output,
    inputs: Inputs = None,
    vfm: Vfm = DEFAULT_VFM,
    vfm_weights: VfmWeights = None,
    layer: Layer = None,
    backbone_precision: BackbonePrecision = "fp32",
    long_side: LongSide = 448,
    glob: Glob = None,
    files_from: FilesFrom = None,
    strict: Strict = False,
    device: Device = "auto",
    overwrite: Overwrite = False,
    out_dtype: OutDtype = "float16",
    compression: Compression = "none",
    shard: Shard = None,
    shard_images: ShardImages = None,
    workers: Workers = None,
    batch_size: BatchSize = 1,
) -> None:
    """Store each image's low-resolution backbone features (with its path, size and hash)."""
    from naf_cli.pipeline.job import JobSpec

    spec = JobSpec(
        inputs=list(inputs or []), output=output, vfm=vfm, vfm_weights=vfm_weights, layer=layer,
        backbone_precision=backbone_precision, long_side=long_side, globs=list(glob or []), files_from=files_from,
        strict=strict, device=device, overwrite=overwrite, out_dtype=out_dtype, compression=compression,
        shard_images=shard_images, workers=workers, batch_size=batch_size, shard=shard, command=command_line(),
    )
    raise typer.Exit(run_and_report(spec))
