"""PCA pictures of many images, from images through a backbone or from feature files.

One basis is fitted first, on a seeded sample of low-resolution feature vectors (up to
``samples`` from each of up to ``fit_images`` images chosen with the seed), and every panel
of every image is coloured with it, so colours mean the same thing across images and
upsamplers. Maps are projected a band of rows at a time, so a feature file's largest maps
are never loaded whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch

from naf_cli.errors import ImageReadError, InputSkipped, NafError, OptionError
from naf_cli.features import FeatureFile
from naf_cli.images import DecodedImage, read_image
from naf_cli.pca.basis import PCABasis, fit_on
from naf_cli.pca.panels import Panel, compose
from naf_cli.pipeline.image_sink import ImageSink
from naf_cli.pipeline.seams import Progress
from naf_cli.pipeline.sources import ImageSource, InputItem
from naf_cli.pipeline.transforms import ExtractFeatures, UpsampleFeatures
from naf_cli.sampling import seeded_choice

TILE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class PcaSettings:
    """Which components become red, green and blue (1-based), how the basis is fitted, panel height."""

    components: tuple[int, ...] = (1, 2, 3)
    seed: int = 0
    fit_images: int = 32
    samples: int = 4096
    height: int = 448

    def __post_init__(self) -> None:
        if not 1 <= len(self.components) <= 3 or min(self.components) < 1:
            raise OptionError(f"--components takes 1 to 3 component numbers from 1, got {list(self.components)}; fix: e.g. --components 1 2 3")


def to_rgb(read_rows: Callable[[int, int], torch.Tensor], shape: Sequence[int], basis: PCABasis,
           settings: PcaSettings) -> torch.Tensor:
    """[3, H, W] colours of a [C, H, W] map read ``read_rows(r0, r1)`` a band of rows at a time."""
    channels, height, width = shape
    rows = max(1, TILE_BYTES // max(1, channels * width * 4))
    picked = [c - 1 for c in settings.components]
    out = torch.empty(3, height, width)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        projected = basis.project(read_rows(r0, r1).float())[picked]
        if len(picked) == 1:  # one component: grey
            projected = projected.expand(3, -1, -1)
        elif len(picked) == 2:  # two: red and green, no blue
            projected = torch.cat((projected, torch.zeros_like(projected[:1])))
        out[:, r0:r1] = projected
    return out


def tensor_rgb(features: torch.Tensor, basis: PCABasis, settings: PcaSettings) -> torch.Tensor:
    """[3, H, W] colours of a [C, H, W] tensor."""
    return to_rgb(lambda r0, r1: features[:, r0:r1], tuple(features.shape), basis, settings)


def dataset_rgb(data: h5py.Dataset, basis: PCABasis, settings: PcaSettings) -> torch.Tensor:
    """[3, H, W] colours of a [C, H, W] HDF5 dataset, read a band of rows at a time."""
    return to_rgb(lambda r0, r1: torch.from_numpy(data[:, r0:r1, :]), tuple(data.shape), basis, settings)


def _label(name: str, shape: Sequence[int]) -> str:
    return f"{name} {shape[-2]}x{shape[-1]}"


def _upsampled_panel(
    label: str, upsample: UpsampleFeatures, photo: torch.Tensor, low: torch.Tensor, basis: PCABasis, settings: PcaSettings,
) -> Panel:
    """photo [1, 3, H, W] and low-res features [1, C, h, w] on the model's device -> the upsampled map's panel."""
    upsampled, _ = upsample(photo, low)
    high = upsampled[0].tensor()
    return Panel(_label(label, high.shape), tensor_rgb(high, basis, settings))


def pca_from_images(
    source: ImageSource, extract: ExtractFeatures, upsamplers: Sequence[tuple[str, UpsampleFeatures]],
    sink: ImageSink, settings: PcaSettings, progress: Progress,
) -> tuple[list[Path], int]:
    """photo | low-res | each upsampler, for every image of ``source``, one PNG each; returns the
    pictures written and the number of inputs (the rest were skipped, each with a line)."""
    items = {item.name: item for item in source}
    warn = progress.warn

    def decoded(item: InputItem) -> DecodedImage | None:
        try:
            return read_image(item.path)[0]
        except (ImageReadError, InputSkipped) as err:
            warn(f"skipped {item.path}: {err}")
            return None

    def low_res(image: DecodedImage) -> torch.Tensor:
        return extract(image).features.tensor()

    fit_names = seeded_choice(list(items), settings.fit_images, settings.seed)
    warn(f"fitting one PCA basis on {len(fit_names)} image(s)")
    basis = fit_on((low_res(image) for name in fit_names if (image := decoded(items[name])) is not None),
                   max(settings.components), settings.seed, settings.samples)
    written = []
    progress.start(len(items), "PCA pictures")
    for name, item in items.items():
        image = decoded(item)
        if image is None:
            progress.advance(name)
            continue
        lr = low_res(image)
        panels = [Panel(_label("photo", image.size), image.rgb()),
                  Panel(_label("low-res", lr.shape), tensor_rgb(lr, basis, settings))]
        photo = image.rgb()[None].to(extract.device)
        panels += [_upsampled_panel(label, upsample, photo, lr[None].to(extract.device), basis, settings)
                   for label, upsample in upsamplers]
        written.append(sink.write(name, compose(panels, settings.height)))
        progress.advance(name)
    return written, len(items)


def _photo(features: FeatureFile, name: str, image_root: Path | None) -> DecodedImage | None:
    from naf_cli.datasets import source_image_path

    try:
        return read_image(source_image_path(features, name, image_root))[0]
    except (NafError, OSError):
        return None


def pca_from_files(
    files: Sequence[FeatureFile], upsamplers: Sequence[tuple[str, UpsampleFeatures]], sink: ImageSink,
    settings: PcaSettings, image_root: Path | None, progress: Progress, device: torch.device,
) -> tuple[list[Path], int]:
    """For every image in the first file (and in the others): photo (when found) | each file's
    map | each upsampler over the low-resolution file's features. Returns the pictures written
    and the number of images the files have in common (the rest were skipped, each with a line)."""
    warn = progress.warn
    low_files = [f for f in files if f.attrs.get("kind") == "extract"]
    if upsamplers and not low_files:
        raise NafError("--upsampler needs low-resolution features; fix: pass an extract file (naf extract) among the inputs")
    names = [name for name in files[0].names if all(name in f for f in files[1:])]
    if not names:
        raise NafError("the feature files have no image in common; fix: pass files written from the same images")
    inputs = len(names)
    readable = []
    for name in names:
        broken = next((f"{f.path}: {f.unreadable[name]}" for f in files if name in f.unreadable), None)
        if broken is None:
            readable.append(name)
        else:
            warn(f"skipped {name}: it cannot be read ({broken}); fix: naf info names the problem and its fix")
    if not readable:
        raise NafError(f"no image of {files[0].path} can be read; fix: run naf info {files[0].path} for the problem and its fix")
    names = readable
    basis_file = low_files[0] if low_files else files[0]
    fit_names = seeded_choice(names, settings.fit_images, settings.seed)
    basis = fit_on((torch.from_numpy(basis_file[name]) for name in fit_names), max(settings.components), settings.seed,
                   settings.samples)
    written = []
    progress.start(len(names), "PCA pictures")
    for name in names:
        photo = _photo(files[0], name, image_root)
        panels = [] if photo is None else [Panel(_label("photo", photo.size), photo.rgb())]
        if photo is None and upsamplers:
            warn(f"skipped {name}: its source image was not found; fix: pass --image-root DIR")
            progress.advance(name)
            continue
        for features in files:
            data = features.dataset(name)
            label = "low-res" if features.attrs.get("kind") == "extract" else str(features.attrs.get("upsampler", features.path.stem))
            panels.append(Panel(_label(label, data.shape), dataset_rgb(data, basis, settings)))
        if upsamplers:
            assert photo is not None
            lr = torch.from_numpy(low_files[0][name]).float()[None].to(device)
            panels += [_upsampled_panel(label, upsample, photo.rgb()[None].to(device), lr, basis, settings)
                       for label, upsample in upsamplers]
        written.append(sink.write(name, compose(panels, settings.height)))
        progress.advance(name)
    return written, inputs
