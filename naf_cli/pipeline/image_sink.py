"""Writing images: PNG, JPEG or TIFF chosen by suffix, 8 or 16 bits, greyscale, RGB or RGBA.

Pillow writes every case but 16-bit colour, which goes through a small PNG encoder here
(PNG is the only one of the three formats Pillow cannot write it to, and the one other
tools read most widely). Files are written under a temporary name and renamed, so a crash
never leaves a half-written image under the final name.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from naf_cli.disk import check_writable, replacing, write_failure
from naf_cli.errors import OutputError
from naf_cli.pipeline.feature_map import FeatureMap
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.sources import InputItem

if TYPE_CHECKING:
    from naf_cli.pipeline.hdf5.layout import RunStatus

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

    def path_for(self, name: str, suffix: str | None = None) -> Path:
        """``<folder>/<name>`` with the sink's suffix, or ``suffix`` given here, in place of its own."""
        path = self.folder / name
        suffix = suffix or self.suffix
        return path.with_suffix(suffix) if suffix else path

    def write(self, name: str, pixels: torch.Tensor, bit_depth: int = 8, exif: bytes = b"") -> Path:
        path = self.path_for(name)
        if path.exists() and not self.overwrite:
            raise OutputError(f"{path} already exists; fix: pass --overwrite or choose another output folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, pixels, bit_depth, exif, self.jpeg_quality)
        return path


DENOISED_TAG = ".denoised"
FALLBACK_SUFFIX = ".png"


def is_denoised_output(path: Path) -> bool:
    """A file ``naf denoise`` wrote beside its input (not taken as an input again)."""
    return path.stem.endswith(DENOISED_TAG)


class RestoredImageSink:
    """The ``Sink`` of ``naf denoise``: each input's restored pixels as an image in its own format.

    Where an input's result goes: beside it as ``NAME.denoised.EXT`` without ``output``;
    ``output`` itself for a single input given a file name with an image suffix; else
    ``output/NAME``. Inputs in formats that cannot be written (e.g. WebP) are written as PNG.
    An existing result is kept (and its input not redone) unless ``overwrite``. Every file is
    written whole or not at all (``write_image``), so an interrupted run only has to be rerun.
    ``on_written`` is called with each path written (the CLI prints it on stdout).
    """

    def __init__(
        self, items: Sequence[InputItem], root: Path, output: Path | None = None, single_file: bool = False,
        overwrite: bool = False, jpeg_quality: int = 95, on_written: Callable[[Path], None] | None = None,
    ) -> None:
        if output is not None and single_file and output.suffix.lower() in FORMATS and output.is_dir():
            raise OutputError(f"{output} is a folder; fix: pass a file name, or a folder without an image suffix")
        if output is not None and output.exists() and not output.is_dir() and not (single_file and output.suffix.lower() in FORMATS):
            raise OutputError(f"-o {output} is an existing file, and the results need a folder; fix: choose a folder name "
                              f"for -o (it is created)")
        self.output = output if output is not None else Path(root)
        self.status: RunStatus | None = None  # a folder of images has no run state
        self.notices: list[str] = []
        self.written: list[Path] = []
        self.megapixels = 0.0
        self.overwrite = overwrite
        self.jpeg_quality = jpeg_quality
        self.on_written = on_written
        self._folder = None if output is None or (single_file and output.suffix.lower() in FORMATS) else ImageSink(output)
        self._single = output if self._folder is None and output is not None else None
        self._paths = {item.name: item.path for item in items}
        for folder in sorted({self.path_for(item.name).parent for item in items}):
            check_writable(folder)

    def path_for(self, name: str) -> Path:
        source = self._paths[name]
        suffix = source.suffix if source.suffix.lower() in FORMATS else FALLBACK_SUFFIX
        if self._single is not None:
            return self._single
        if self._folder is not None:
            return self._folder.path_for(name, suffix)
        return source.with_name(source.stem + DENOISED_TAG + suffix)

    def prepare(self, run_settings: Mapping[str, object], partition: Partition = Partition()) -> set[str]:
        """The inputs whose result exists already, or will exist (two inputs with one output:
        ``a.png`` and ``a.webp``): kept (with a line each), unless ``overwrite``."""
        kept = set()
        claimed: set[Path] = set()
        for name, source in self._paths.items():
            target = self.path_for(name)
            if target.exists() and os.path.samefile(target, source):
                raise OutputError(f"the output for {source} is the input itself; fix: choose another -o")
            if target.exists() and not self.overwrite:
                kept.add(name)
                self.notices.append(f"kept {target}: it exists (pass --overwrite to redo it)")
            elif target in claimed and not self.overwrite:
                kept.add(name)
                self.notices.append(f"kept {target}: an earlier input writes it, not {source} (pass --overwrite to let the "
                                    f"later input replace it)")
            claimed.add(target)
        return kept

    def begin(self, attrs: Mapping[str, object], names: Sequence[str] = (), arrays: Mapping[str, np.ndarray] | None = None) -> None:
        pass

    def write(self, name: str, features: FeatureMap, attrs: Mapping[str, object]) -> None:
        """``features``: the restored pixels [C, H, W] in [0, 1]; ``attrs``: the source's bit depth
        (``source_bit_depth``) and EXIF block (``exif``) to keep."""
        target = self.path_for(name)
        pixels = features.tensor()
        bit_depth = int(attrs.get("source_bit_depth", 8))  # type: ignore[call-overload]
        if target.suffix.lower() in (".jpg", ".jpeg"):
            bit_depth = 8
            if pixels.shape[0] == 4:
                raise OutputError(f"cannot write {target}: JPEG holds no alpha; fix: write .png (-o DIR/NAME.png)")
        if target.suffix.lower() in (".tif", ".tiff") and pixels.shape[0] != 1:
            bit_depth = 8
        try:
            os.makedirs(target.parent, exist_ok=True)
        except OSError as err:
            raise write_failure(target, err) from err
        exif = attrs.get("exif", b"")
        write_image(target, pixels, bit_depth, exif if isinstance(exif, bytes) else b"", self.jpeg_quality)
        self.written.append(target)
        self.megapixels += pixels.shape[-2] * pixels.shape[-1] / 1e6
        if self.on_written is not None:
            self.on_written(target)

    def end_group(self) -> None:
        pass

    def record_skip(self, name: str, reason: str) -> None:
        pass

    def finish(self) -> Path:
        return self.output

    def abort(self) -> Path | None:
        return None  # every file written is whole; a rerun keeps them
