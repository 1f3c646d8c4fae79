"""Pure size rules of the upsampling pipeline."""

from __future__ import annotations


def backbone_input_size(image_hw: tuple[int, int], patch_size: int, long_side: int = 448) -> tuple[int, int]:
    """Size the image is resized to before the backbone.

    The long side becomes ``long_side``, the aspect ratio is kept, and each side is rounded
    to the nearest multiple of the patch size (at least one patch).
    """
    h, w = image_hw
    scale = long_side / max(h, w)
    return tuple(max(patch_size, round(side * scale / patch_size) * patch_size) for side in (h, w))  # type: ignore[return-value]


def output_size(feature_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Upsampled size: the feature grid times ``scale``, rounded, at least 1."""
    return tuple(max(1, round(side * scale)) for side in feature_hw)  # type: ignore[return-value]


def chunk_shape(channels: int, height: int, width: int, itemsize: int = 2, max_bytes: int = 1 << 20) -> tuple[int, int, int]:
    """HDF5 chunk of a [C, H, W] dataset: all channels, a square spatial tile of at most ``max_bytes``."""
    tile = max(1, int((max_bytes / (channels * itemsize)) ** 0.5))
    return channels, min(height, tile), min(width, tile)
