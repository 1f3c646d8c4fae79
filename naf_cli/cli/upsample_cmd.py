"""`naf upsample`: the main job, backbone features upsampled into one HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from naf_cli.cli.feature_job import command_line, run_and_report
from naf_cli.cli.options import (
    BackbonePrecision,
    BatchSize,
    Checkpoint,
    Compression,
    Device,
    FilesFrom,
    Glob,
    ImageRoot,
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


def upsample(
    output: Output,
    inputs: Inputs = None,
    vfm: Vfm = DEFAULT_VFM,
    upsampler: Annotated[str, typer.Option("--upsampler", help="naf, nearest, bilinear, bicubic, jbu (joint bilateral upsampling) or jbf (bilinear + joint bilateral filter); see `naf models`.")] = "naf",
    output_size: Annotated[str, typer.Option(
        "--output-size", help="grid (feature grid x --scale), image (each photo's own size) or HxW (e.g. 448x448).",
    )] = "grid",
    scale: Annotated[Optional[float], typer.Option(
        "--scale", help="With --output-size grid: output = feature grid x scale (16 = backbone input size for patch 16). \\[default: 16]",
        show_default=False,
    )] = None,
    checkpoint: Checkpoint = "auto",
    image_root: ImageRoot = None,
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
    max_memory: Annotated[Optional[str], typer.Option(
        "--max-memory", help="Memory one forward may use, e.g. 8G (default: what is available). NAF outputs that need more are "
        "computed and written in bands of rows.",
    )] = None,
    pca: Annotated[Optional[int], typer.Option(
        "--pca", help="Store K principal components of the features instead of all C channels (C/K times smaller); the "
        "basis, fitted on the run's low-resolution features, is stored under /pca (FeatureFile.reconstruct undoes it).",
        show_default=False,
    )] = None,
    pca_fit: Annotated[Optional[int], typer.Option(
        "--pca-fit", help="With --pca: images (a seeded choice of the inputs) the basis is fitted on. \\[default: all, up to 256]",
        show_default=False,
    )] = None,
    pca_basis: Annotated[Optional[Path], typer.Option(
        "--pca-basis", help="With or instead of --pca: use the basis of this --pca output rather than fitting one (the "
        "parts of one run on unlike machines share it this way).", show_default=False,
    )] = None,
) -> None:
    """Upsample the backbone features of every image into one HDF5 file.

    INPUTS may also be one extract file (naf extract -o lr.h5): its stored features are
    upsampled without a second backbone pass.
    """
    from naf_cli.pipeline.job import JobSpec, UpsampleSpec

    spec = JobSpec(
        inputs=list(inputs or []), output=output, vfm=vfm, vfm_weights=vfm_weights, layer=layer,
        backbone_precision=backbone_precision, long_side=long_side, globs=list(glob or []), files_from=files_from,
        strict=strict, device=device, overwrite=overwrite, out_dtype=out_dtype, compression=compression,
        shard_images=shard_images, workers=workers, batch_size=batch_size, shard=shard, command=command_line(),
        upsample=UpsampleSpec(upsampler=upsampler, checkpoint=checkpoint, output_size=output_size, scale=scale,
                              image_root=image_root, max_memory=max_memory, pca=pca, pca_fit=pca_fit, pca_basis=pca_basis),
    )
    raise typer.Exit(run_and_report(spec))
