"""How much a run will write, said before its first image, and refused when it cannot fit.

The bytes of one image follow from its output's shape (channels, the output size rule) and
the stored dtype, chunk padding included and compression aside. Output sizes depend on each
photo's aspect ratio, so they are taken from the headers of a seeded sample of the inputs
(reading a header does not decode the image).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from naf_cli.errors import OptionError
from naf_cli.pipeline.memory import human_bytes
from naf_cli.pipeline.sizes import chunk_shape, stored_bytes
from naf_cli.sampling import seeded_choice

# image headers read for the estimate
SIZE_SAMPLE = 32
SIZE_SEED = 0

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class RunSize:
    """About ``per_image`` bytes for each of ``images`` images still to write (``typical``: the
    first sampled output's [C, H, W]); ``sampled``: outputs the estimate was made from."""

    per_image: int
    images: int
    typical: Shape
    dtype: str
    sampled: int
    compressed: bool = False

    @property
    def total(self) -> int:
        return self.per_image * self.images

    def line(self, free: int, folder: Path) -> str:
        shape = "x".join(map(str, self.typical))
        note = ", before compression" if self.compressed else ""
        return (f"size: about {human_bytes(self.per_image)} per image ({self.dtype}{note}; the mean of {self.sampled} "
                f"sampled output(s), e.g. {shape}), about {human_bytes(self.total)} for {self.images} image(s) to write; "
                f"{human_bytes(free)} free on the disk of {folder}")


def estimate(names: Sequence[str], output_shape: Callable[[str], Shape | None], images: int, dtype: str,
             compressed: bool = False) -> RunSize | None:
    """The size of ``images`` outputs from those of a seeded sample of ``names``
    (``output_shape(name)``: its [C, H, W], None when its header cannot be read). None
    when no sampled input's size is known."""
    itemsize = np.dtype(dtype).itemsize
    shapes = [shape for name in seeded_choice(list(names), SIZE_SAMPLE, SIZE_SEED) if (shape := output_shape(name))]
    if not shapes:
        return None
    per_image = sum(stored_bytes(shape, chunk_shape(*shape, itemsize=itemsize), itemsize) for shape in shapes) // len(shapes)
    return RunSize(per_image, images, shapes[0], dtype, len(shapes), compressed)


def finished_names(output: Path) -> set[str]:
    """Images an existing output already holds (readable, any part's); empty when there is none."""
    from naf_cli.errors import NafError
    from naf_cli.features import FeatureFile

    if not Path(output).is_file():
        return set()
    try:
        with FeatureFile(output) as existing:
            return set(existing.names) - set(existing.unreadable)
    except (NafError, OSError):
        return set()


def output_bytes(output: Path) -> int:
    """Bytes an output takes: its index and every file of its shards folder."""
    from naf_cli.pipeline.hdf5.layout import shard_folder

    files = [Path(output), *(shard_folder(Path(output)).glob("*"))]
    return sum(f.stat().st_size for f in files if f.is_file())


def free_bytes(output: Path) -> tuple[int, Path]:
    """Free bytes on the disk ``output`` goes to, and the folder asked about."""
    folder = Path(output).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free, folder


def check_fits(size: RunSize, free: int, folder: Path, fixes: Sequence[str], warn: Callable[[str], None]) -> None:
    """An OptionError (before any work) when the run clearly cannot fit on its disk; with
    compression, whose gain is not known in advance, a warning instead."""
    if size.total <= free:
        return
    what = (f"the run would write about {human_bytes(size.total)} ({human_bytes(size.per_image)} per image, "
            f"{size.images} image(s))")
    if size.compressed:
        warn(f"warning: {what} before compression, more than the {human_bytes(free)} free on the disk of {folder}; it "
             f"fits only if compression saves the difference")
        return
    options = ", ".join([*fixes, "-o on a larger disk"])
    raise OptionError(f"{what}, more than the {human_bytes(free)} free on the disk of {folder}; fix: {options}")
