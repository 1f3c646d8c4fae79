"""Reading images from disk into tensors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from naf_cli.errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# refuse decompression bombs, but allow large real photos (about 16k x 16k)
MAX_PIXELS = 268_000_000


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), by suffix, in sorted order.

    Hidden files and folders (names starting with ".", such as macOS ``._photo.jpg``
    resource forks) are skipped.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"{folder} does not exist; fix: pass a folder of images")
    if folder.is_file():
        return [folder]
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def load_image(path: Path) -> torch.Tensor:
    """Decode an image as RGB float [3, H, W] in [0, 1], upright according to its EXIF tag."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                if img.mode.startswith("I"):
                    return _high_bit_depth(img)
                rgb = img.convert("RGB")
                rgb.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}; fix: re-encode or remove the file") from err
    array = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return array.view(rgb.height, rgb.width, 3).permute(2, 0, 1).float().div_(255)


def _high_bit_depth(img: Image.Image) -> torch.Tensor:
    """16-bit (or 32-bit integer) greyscale scaled by 65535: Pillow's RGB conversion would clip at 255."""
    values = torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0).clamp_(0, 1)
    return values[None].expand(3, -1, -1).contiguous()
