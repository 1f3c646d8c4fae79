"""`naf pca`: PCA pictures of features, one PNG per image, colours shared across images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from naf_cli.cli.errors import EXIT_SKIPPED
from naf_cli.cli.options import Checkpoint, Device, ImageRoot, Inputs, LongSide, VfmWeights
from naf_cli.defaults import DEFAULT_VFM

if TYPE_CHECKING:
    import torch

    from naf_cli.pipeline.seams import Progress
    from naf_cli.pipeline.transforms import UpsampleFeatures


def pca(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the PNGs (one per image, named like the image).")],
    inputs: Inputs = None,
    vfm: Annotated[str, typer.Option("--vfm", help="With images as inputs: the backbone (see `naf models`).")] = DEFAULT_VFM,
    upsampler: Annotated[
        Optional[list[str]],
        typer.Option("--upsampler", help="Upsamplers shown beside the low-res map, e.g. --upsampler naf bilinear. \\[default: naf bilinear for images]"),
    ] = None,
    components: Annotated[
        Optional[list[int]], typer.Option("--components", help="Components shown as red, green, blue (1-based). \\[default: 1 2 3]"),
    ] = None,
    scale: Annotated[float, typer.Option("--scale", help="Upsampling: output = feature grid x scale.")] = 16.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the images and positions the basis is fitted on.")] = 0,
    fit_images: Annotated[int, typer.Option("--fit-images", help="Images the basis is fitted on (a seeded sample).")] = 32,
    samples: Annotated[int, typer.Option("--samples", help="Low-res feature vectors sampled from each of them.")] = 4096,
    height: Annotated[int, typer.Option("--height", help="Height of every panel in the picture, in pixels.")] = 448,
    checkpoint: Checkpoint = "auto",
    image_root: ImageRoot = None,
    vfm_weights: VfmWeights = None,
    long_side: LongSide = 448,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing pictures (otherwise an existing one is an error).")] = False,
) -> None:
    """PCA pictures: photo | low-res features | each upsampler, side by side, labelled.

    INPUTS are images (their features from --vfm) or HDF5 feature files (naf extract / naf upsample). One
    PCA basis, fitted on a seeded sample of low-resolution features, colours every image.
    """

    from contextlib import closing

    from naf_cli.cli.progress import make_progress
    from naf_cli.devices import resolve_device
    from naf_cli.errors import OptionError
    from naf_cli.pca.render import PcaSettings, pca_from_files, pca_from_images
    from naf_cli.pipeline.image_sink import ImageSink
    from naf_cli.pipeline.sizes import check_positive

    paths = list(inputs or [])
    if not paths:
        raise OptionError("naf pca needs inputs: images or feature files; fix: e.g. naf pca photos/ -o pca/")
    for name, value in (("--scale", scale), ("--fit-images", fit_images), ("--samples", samples), ("--height", height)):
        check_positive(name, value)
    settings = PcaSettings(tuple(components or (1, 2, 3)), seed, fit_images, samples, height)
    target = resolve_device(device)
    sink = ImageSink(output, ".png", overwrite=overwrite)

    progress = make_progress()
    files = [p for p in paths if p.suffix.lower() in (".h5", ".hdf5")]
    if files and len(files) != len(paths):
        raise OptionError("naf pca takes either images or feature files, not both; fix: run it once for each")
    if files:
        from naf_cli.features import FeatureFile

        opened = [FeatureFile(p) for p in files]
        named = {str(f.attrs.get("backbone", "")) for f in opened}
        backbone = named.pop() if len(named) == 1 else ""  # several: auto falls back to the shipped weights, saying why
        upsamplers = _upsamplers(upsampler or [], checkpoint, backbone, target, scale, progress)
        with closing(progress):
            written, attempted = pca_from_files(opened, upsamplers, sink, settings, image_root, progress,
                                     _device(target))
    else:
        from naf_cli.backbones import load_backbone
        from naf_cli.pipeline.sources import ImageSource
        from naf_cli.pipeline.transforms import ExtractFeatures

        extract = ExtractFeatures(load_backbone(vfm, vfm_weights, target), long_side)
        upsamplers = _upsamplers(upsampler if upsampler is not None else ["naf", "bilinear"], checkpoint, vfm, target, scale,
                                 progress)
        with closing(progress):
            written, attempted = pca_from_images(ImageSource(paths), extract, upsamplers, sink, settings, progress)
    print(f"wrote {len(written)} PCA picture{'s' if len(written) != 1 else ''} to {output}")
    if len(written) < attempted:  # each skipped input was named on stderr
        raise typer.Exit(EXIT_SKIPPED)


def _device(name: str) -> torch.device:
    import torch

    return torch.device(name)


def _upsamplers(names: list[str], checkpoint: Optional[str], backbone: str, device: str, scale: float,
                progress: Progress) -> list[tuple[str, UpsampleFeatures]]:
    from naf_cli.checkpoint_choice import resolve_auto
    from naf_cli.pipeline.sizes import OutputSize
    from naf_cli.pipeline.transforms import UpsampleFeatures
    from naf_cli.upsamplers import load_upsampler

    checkpoint, choice = resolve_auto(checkpoint, backbone, "naf" if "naf" in names else "")
    if choice is not None:
        progress.warn(choice.line())
    made = []
    for name in names:
        model, info = load_upsampler(name, checkpoint, device)
        made.append((name, UpsampleFeatures(model.eval(), info, OutputSize("grid", scale))))
    return made
