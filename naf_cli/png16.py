"""16-bit colour PNGs, which Pillow decodes to 8 bits per sample (it has no 16-bit RGB mode).

Their samples are decoded by torchvision (libpng) instead, and turned upright by the EXIF
orientation as Pillow's ``ImageOps.exif_transpose`` turns the 8-bit image. torchvision 0.29
deprecates its image decoders: where a later one has none, the 8-bit decoding stands.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour types with more than one sample per pixel: grey + alpha, RGB, RGBA
_COLOUR_TYPES = {4: "grey+alpha", 2: "RGB", 6: "RGBA"}

# EXIF orientation -> the flip or rotation that makes an [H, W, C] array upright
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def is_colour_png16(data: bytes) -> bool:
    """The file is a PNG with 16-bit samples and more than one sample per pixel."""
    return data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 25 and data[24] == 16 \
        and data[25] in _COLOUR_TYPES


def decode_colour_png16(data: bytes, orientation: int = 1) -> np.ndarray | None:
    """[H, W, 3 or 4] float32 in [0, 1] (grey + alpha becomes RGBA), upright for ``orientation``;
    None where torchvision has no PNG decoder.

    Raises ValueError when libpng cannot decode the file.
    """
    try:
        from torchvision.io import ImageReadMode, decode_png
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            samples = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as err:
        raise ValueError(str(err).splitlines()[0]) from err
    array = samples.to(torch.int32).permute(1, 2, 0).numpy().astype(np.float32) / 65535.0
    if array.shape[2] == 2:
        array = np.concatenate((np.repeat(array[..., :1], 3, axis=2), array[..., 1:]), axis=2)
    upright = _UPRIGHT.get(orientation)
    return np.ascontiguousarray(upright(array) if upright else array)
