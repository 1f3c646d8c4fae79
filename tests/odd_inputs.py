"""A folder holding every kind of input the pipeline must handle, made from real photos.

``make_odd_folder(folder, photo)`` returns (the names that must produce features, the
names that must be skipped). Written for tests; every file is a real encoded file.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels; decoding it is what a bomb does."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def make_odd_folder(folder: Path, photo: Path) -> tuple[set[str], set[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(photo).convert("RGB")
    good: dict[str, Image.Image | None] = {}

    def save(name: str, image: Image.Image, **options: object) -> None:
        image.save(folder / name, **options)
        good[name] = image

    save("photo.jpg", rgb)
    save("tiny_1x1.png", rgb.resize((1, 1)))
    save("tiny_2x2.png", rgb.resize((2, 2)))
    save("line_1x500.png", rgb.resize((500, 1)))   # 1 row, 500 columns
    save("line_500x1.png", rgb.resize((1, 500)))   # 500 rows, 1 column
    save("panorama_20000x300.jpg", rgb.resize((20000, 300)), quality=70)
    save("grey.png", rgb.convert("L"))
    save("palette.png", rgb.convert("P"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    save("alpha.png", rgba)
    save("cmyk.jpg", rgb.convert("CMYK"))
    deep = Image.frombytes("I;16", rgb.size, bytes(rgb.convert("L").tobytes()) * 2)
    save("deep16.png", deep)
    exif = rgb.getexif()
    exif[0x0112] = 6
    save("rotated_exif.jpg", rgb, exif=exif)
    frames = [rgb.resize((64, 48)), rgb.resize((64, 48)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good["animated.gif"] = None
    save("name with spaces.jpg", rgb.resize((120, 90)))
    save("ünïcödé 写真.jpg", rgb.resize((90, 120)))
    save("-leading-dash.jpg", rgb.resize((100, 100)))
    (folder / "sub" / "deeper").mkdir(parents=True)
    save("sub/deeper/nested.png", rgb.resize((64, 64)))

    bad = {
        "truncated.jpg": photo.read_bytes()[: photo.stat().st_size // 3],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
        "text_named.png": b"these are notes, not pixels\n",
        "zero_bytes.jpg": b"",
        "bomb.png": decompression_bomb_png(),
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    (folder / "folder_named.jpg").mkdir()
    (folder / "broken_link.jpg").symlink_to(folder / "does-not-exist.jpg")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    shutil.copy(photo, folder / "notes.txt")  # not an image name: ignored
    skipped = set(bad) | {"folder_named.jpg", "broken_link.jpg"}
    return set(good), skipped
