"""Pure size rules of the pipeline (documented in docs/format.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from naf_cli.errors import OptionError

DEFAULT_SCALE = 16.0
# past this stretch of the aspect ratio (the backbone input rounds each side to whole
# patches) a warning says the features come from a distorted image
ASPECT_WARNING = 1.5


def backbone_input_size(image_hw: tuple[int, int], patch_size: int, long_side: int = 448) -> tuple[int, int]:
    """Size the image is resized to before the backbone.

    The long side becomes ``long_side``, the aspect ratio is kept, and each side is rounded
    to the nearest multiple of the patch size (at least one patch).
    """
    h, w = image_hw
    scale = long_side / max(h, w)
    return (max(patch_size, round(h * scale / patch_size) * patch_size),
            max(patch_size, round(w * scale / patch_size) * patch_size))


def aspect_stretch(image_hw: tuple[int, int], resized_hw: tuple[int, int]) -> float:
    """How much resizing stretches one axis relative to the other (1.0: not at all)."""
    ratio = (resized_hw[0] / image_hw[0]) / (resized_hw[1] / image_hw[1])
    return max(ratio, 1 / ratio)


def output_size(feature_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Upsampled size: the feature grid times ``scale``, rounded, at least 1."""
    return max(1, round(feature_hw[0] * scale)), max(1, round(feature_hw[1] * scale))


# a sensible value of each option checked by ``check_positive``, for the fix its error suggests
TYPICAL = {"--long-side": 448, "--scale": 16, "--ratio": 16, "--channels": 384, "--lr-size": 28, "--image-size": 448,
           "--batch": 1, "--repeats": 3, "--fit-images": 64, "--samples": 20000, "--height": 256}


def check_positive(option: str, value: float) -> None:
    """OptionError unless ``value`` is a finite number above zero."""
    if not math.isfinite(value) or value <= 0:
        example = f"e.g. {option} {TYPICAL[option]}" if option in TYPICAL else "a number above 0"
        raise OptionError(f"{option} must be a finite number above 0, got {value}; fix: pass {example}")


@dataclass(frozen=True)
class OutputSize:
    """How large upsampled features are.

    ``grid``: the feature grid times ``scale``; ``image``: the source image's own size;
    ``fixed``: ``(H, W)`` for every image. In every mode the output covers the whole image.
    """

    mode: str = "grid"
    scale: float = DEFAULT_SCALE
    fixed: tuple[int, int] = (0, 0)

    @classmethod
    def parse(cls, text: str, scale: float | None = None) -> OutputSize:
        """From ``--output-size grid|image|HxW`` and ``--scale`` (only meaningful with ``grid``)."""
        text = text.strip().lower()
        if scale is not None:
            check_positive("--scale", scale)
            if text != "grid":
                raise OptionError(f"--scale applies to --output-size grid, not {text}; fix: drop --scale or use --output-size grid")
        if text == "grid":
            return cls("grid", DEFAULT_SCALE if scale is None else float(scale))
        if text == "image":
            return cls("image")
        match = re.fullmatch(r"(\d+)\s*x\s*(\d+)", text)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise OptionError(f"--output-size must be grid, image or HxW with positive integers, got '{text}'; fix: e.g. "
                              f"--output-size 448x448, --output-size image, or --output-size grid --scale 16")
        return cls("fixed", fixed=(int(match[1]), int(match[2])))

    def resolve(self, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output for an image of ``image_hw`` with a feature grid ``grid_hw``."""
        if self.mode == "grid":
            return output_size(grid_hw, self.scale)
        if self.mode == "image":
            return int(image_hw[0]), int(image_hw[1])
        return self.fixed

    def largest(self, patch_size: int, long_side: int) -> tuple[int, int] | None:
        """The largest output any image can get, or None when it depends on the image (``image``)."""
        if self.mode == "grid":
            cells = max(1, round(long_side / patch_size))
            return output_size((cells, cells), self.scale)
        if self.mode == "fixed":
            return self.fixed
        return None

    def describe(self) -> str:
        if self.mode == "grid":
            return f"grid x{self.scale:g}"
        if self.mode == "image":
            return "image"
        return f"{self.fixed[0]}x{self.fixed[1]}"


CHANNEL_BLOCK = 64


def _even_split(size: int, target: int) -> list[int]:
    """Tile lengths for one axis of ``size``: each at most ``target`` long, the fewest tiles
    first, then one or two more, so that tiles cover the axis with little padding."""
    fewest = -(-size // max(1, target))
    return [-(-size // count) for count in range(fewest, min(size, fewest + 3) + 1)]


def chunk_shape(channels: int, height: int, width: int, itemsize: int = 2, max_bytes: int = 1 << 20) -> tuple[int, int, int]:
    """HDF5 chunk of a [C, H, W] dataset, at most ``max_bytes``: channel blocks of at most 64
    (split evenly) times a spatial tile near square, so one image, one tile or one channel
    range reads only the chunks it needs.

    Edge chunks are stored whole, so each side's tile is chosen to split it evenly: the bytes
    stored (``stored_bytes``) stay within 1.05x the data's (tested over many shapes).
    """
    blocks = -(-channels // CHANNEL_BLOCK)
    block = -(-channels // blocks)
    side = max(1, int((max_bytes / (block * itemsize)) ** 0.5))
    shape = (channels, height, width)
    candidates = []
    for tile_h in _even_split(height, side):
        # the width's tile may grow when the height's tile is short, within max_bytes
        across = max(1, max_bytes // (block * itemsize * tile_h))
        candidates += [(block, tile_h, tile_w) for tile_w in _even_split(width, min(across, max(side, across // 2)))]
    # the largest chunk (fewest reads and index entries) that pads by at most 1%, else the least padding
    data = channels * height * width
    close = [chunk for chunk in candidates if stored_bytes(shape, chunk, 1) <= 1.01 * data]
    if close:
        return max(close, key=math.prod)
    return min(candidates, key=lambda chunk: stored_bytes(shape, chunk, 1))


def stored_bytes(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> int:
    """Bytes an uncompressed chunked dataset takes on disk: edge chunks are stored whole."""
    count = 1
    for size, chunk in zip(shape, chunks, strict=True):
        count *= -(-size // chunk)
    return count * math.prod(chunks) * itemsize
