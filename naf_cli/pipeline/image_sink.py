"""Writing images: PNG, JPEG or TIFF chosen by suffix, 8 or 16 bits, greyscale, RGB or RGBA.

Pillow writes every case but 16-bit colour, which goes through a small PNG encoder here
(PNG is the only one of the three formats Pillow cannot write it to, and the one other
tools read most widely). Files are written under a temporary name and renamed, so a crash
never leaves a half-written image under the final name.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from naf_cli.disk import check_writable, replacing
from naf_cli.errors import OutputError

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
_MODES_8BIT = {1: "L", 3: "RGB", 4: "RGBA"}


def quantise(pixels: torch.Tensor, bit_depth: int) -> np.ndarray:
    """[C, H, W] in [0, 1] -> [H, W, C] uint8 or uint16 (rounded, clipped)."""
    top = (1 << bit_depth) - 1
    values = (pixels.detach().float().cpu().clamp(0, 1) * top).round()
    return values.permute(1, 2, 0).numpy().astype(np.uint8 if bit_depth == 8 else np.uint16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(samples: np.ndarray, exif: bytes = b"") -> bytes:
    """A 16-bit PNG of [H, W, C] uint16 samples (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); rows unfiltered."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    rows = samples.astype(">u2").reshape(height, width * channels).view(np.uint8)
    # each scanline starts with its filter type, 0 = none
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    body = _chunk(b"IHDR", header)
    if exif:
        body += _chunk(b"eXIf", exif)
    body += _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def write_image(path: Path, pixels: torch.Tensor, bit_depth: int = 8, exif: bytes = b"", jpeg_quality: int = 95) -> None:
    """Write ``pixels`` [C, H, W] in [0, 1] (C = 1, 3 or 4) to ``path``; the format follows the suffix."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    channels = int(pixels.shape[0])
    if fmt is None:
        raise OutputError(f"cannot write {path}: unknown image suffix; fix: use one of {', '.join(FORMATS)}")
    if pixels.ndim != 3 or channels not in _MODES_8BIT:
        raise OutputError(f"cannot write {path}: pixels must be [C, H, W] with C = 1, 3 or 4, got {list(pixels.shape)}")
    if bit_depth not in (8, 16):
        raise OutputError(f"cannot write {path}: bit depth must be 8 or 16, got {bit_depth}")
    if fmt == "JPEG" and (bit_depth == 16 or channels == 4):
        raise OutputError(f"cannot write {path}: JPEG holds neither 16-bit samples nor alpha; fix: write .png or .tif")
    if fmt == "TIFF" and bit_depth == 16 and channels != 1:
        raise OutputError(f"cannot write {path}: 16-bit colour TIFF is not supported; fix: write .png, or 8 bits")
    samples = quantise(pixels, bit_depth)
    with replacing(path) as tmp:
        if bit_depth == 16 and channels != 1:
            tmp.write_bytes(encode_png16(samples, exif))
        else:
            image = Image.fromarray(samples[..., 0] if channels == 1 else samples, mode=None)
            options: dict[str, object] = {"exif": exif} if exif else {}
            if fmt == "JPEG":
                options.update(quality=jpeg_quality)
            image.save(tmp, fmt, **options)


class ImageSink:
    """Writes one image per input under ``folder``, at ``<folder>/<name>`` with the suffix replaced.

    ``suffix`` (``.png``...) forces a format; None keeps each input's own suffix. An
    existing file is an OutputError unless ``overwrite``.
    """

    def __init__(self, folder: Path, suffix: str | None = None, jpeg_quality: int = 95, overwrite: bool = False) -> None:
        if suffix is not None and suffix.lower() not in FORMATS:
            raise OutputError(f"unknown image suffix {suffix}; fix: use one of {', '.join(FORMATS)}")
        self.folder = Path(folder)
        check_writable(self.folder)
        self.suffix = suffix
        self.jpeg_quality = jpeg_quality
        self.overwrite = overwrite

    def path_for(self, name: str) -> Path:
        path = self.folder / name
        return path.with_suffix(self.suffix) if self.suffix else path

    def write(self, name: str, pixels: torch.Tensor, bit_depth: int = 8, exif: bytes = b"") -> Path:
        path = self.path_for(name)
        if path.exists() and not self.overwrite:
            raise OutputError(f"{path} already exists; fix: pass --overwrite or choose another output folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, pixels, bit_depth, exif, self.jpeg_quality)
        return path
