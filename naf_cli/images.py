"""Decoding image files into tensors, with one precise reason for every file that fails."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from naf_cli.errors import ImageReadError
from naf_cli.png16 import decode_colour_png16, is_colour_png16

# refuse decompression bombs, but allow large real photos (about 16k x 16k)
MAX_PIXELS = 268_000_000
EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
FIX = "fix: re-encode or remove the file"


@dataclass(frozen=True)
class DecodedImage:
    """An image as the pipeline sees it.

    Attributes:
        pixels: [C, H, W] float32 in [0, 1], upright (EXIF orientation applied); C is 1
            (greyscale), 3 (RGB) or 4 (RGBA).
        bit_depth: 8 or 16, the precision of the source samples.
        exif: the source's EXIF block with the orientation tag removed, or b"".
        frames: number of frames; only the first of an animated image is decoded.
        format: Pillow's name of the file format (``PNG``, ``JPEG``...).
    """

    pixels: torch.Tensor
    bit_depth: int = 8
    exif: bytes = b""
    frames: int = 1
    format: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])

    def rgb(self) -> torch.Tensor:
        """[3, H, W]: greyscale repeated, alpha dropped."""
        if self.pixels.shape[0] == 1:
            return self.pixels.expand(3, -1, -1).contiguous()
        return self.pixels[:3]


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or an ImageReadError that says why there are none."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageReadError(f"cannot read {path}: broken symbolic link (to {os.readlink(path)}); fix: repair or remove the link")
    if path.is_dir():
        raise ImageReadError(f"cannot read {path}: it is a directory, not an image; fix: rename it or narrow --glob")
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise ImageReadError(f"cannot read {path}: {err.strerror or err}; fix: check that the file exists and is readable") from err
    if not stat.S_ISREG(mode):
        # a FIFO or a device would block the read (or never end): never opened
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ImageReadError(f"cannot read {path}: it is {kind}, not a regular file; fix: remove it from the inputs or "
                             f"narrow --glob")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"cannot read {path}: {err.strerror or err}; fix: check that the file exists and is readable") from err
    if not data:
        raise ImageReadError(f"cannot read {path}: the file is empty (0 bytes); {FIX}")
    return data


def decode_image(data: bytes, name: str | Path = "<bytes>") -> DecodedImage:
    """Decode an encoded image (any format Pillow reads). ``name`` is used in error messages."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                frames = int(getattr(img, "n_frames", 1))
                source_format = img.format or ""
                orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
                upright = ImageOps.exif_transpose(img)
                exif = upright.getexif()
                exif.pop(EXIF_ORIENTATION, None)
                deep = decode_colour_png16(data, orientation) if is_colour_png16(data) else None
                # Pillow keeps 8 of a colour PNG's 16 bits
                array, bit_depth = (deep, 16) if deep is not None else _samples(upright)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read {name}: more pixels than the {MAX_PIXELS:,}-pixel safety limit "
                             f"(a decompression bomb, or a huge scan); fix: downscale it first") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(f"cannot read {name}: not an image format Pillow can decode "
                             f"(the file starts with {data[:8]!r}); {FIX}") from err
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as err:
        raise ImageReadError(f"cannot read {name}: truncated or corrupt ({err}); {FIX}") from err
    pixels = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return DecodedImage(pixels, bit_depth, exif.tobytes() if len(exif) else b"", frames, source_format)


def header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of an image upright, from its header alone (nothing decoded); None when the
    header cannot be read (the run says why when it decodes the file)."""
    try:
        if not stat.S_ISREG(Path(path).stat().st_mode):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb is refused, with its reason, when the run decodes it
            with Image.open(path) as img:
                width, height = img.size
                turned = int(img.getexif().get(EXIF_ORIENTATION, 1)) in (5, 6, 7, 8)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError):
        return None
    return (width, height) if turned else (height, width)


def _samples(img: Image.Image) -> tuple[np.ndarray, int]:
    """[H, W, C] float32 in [0, 1] and the source bit depth."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's RGB conversion would clip 16-bit values at 255: scale them ourselves
        values = np.asarray(img, dtype=np.float32)
        scale = 1.0 if img.mode == "F" else 65535.0
        return np.clip(values / scale, 0, 1)[..., None], 16
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255, 8
    has_alpha = img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    converted = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255, 8


def read_image(path: Path) -> tuple[DecodedImage, str]:
    """Decode a file and hash its bytes (one read): (image, sha256 hex of the file)."""
    data = read_bytes(path)
    return decode_image(data, path), hashlib.sha256(data).hexdigest()


def load_image(path: Path) -> torch.Tensor:
    """Decode an image file as RGB float [3, H, W] in [0, 1], upright according to its EXIF tag."""
    return decode_image(read_bytes(path), path).rgb()
