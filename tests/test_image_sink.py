"""The image sink: PNG/JPEG/TIFF, 8 and 16 bits, greyscale, RGB and RGBA, EXIF kept."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from naf_cli.errors import OutputError
from naf_cli.images import decode_image, read_image
from naf_cli.pipeline.image_sink import ImageSink, write_image


def pixels(channels: int, bit_depth: int, seed: int = 0) -> torch.Tensor:
    """Random samples exactly representable at ``bit_depth``."""
    top = (1 << bit_depth) - 1
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, top + 1, (channels, 7, 11), generator=g).float() / top


def png_samples(data: bytes) -> np.ndarray:
    """An independent reader for unfiltered 16-bit PNGs, from the PNG specification."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, *_ = header
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels * 2)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].copy().view(">u2").reshape(height, width, channels).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_eight_bit_round_trip_is_exact(tmp_path, suffix, channels):
    original = pixels(channels, 8)
    path = tmp_path / f"x{suffix}"
    write_image(path, original, bit_depth=8)
    decoded, _ = read_image(path)
    assert decoded.bit_depth == 8 and decoded.pixels.shape == original.shape
    assert torch.equal(decoded.pixels, original)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_greyscale_round_trip_is_exact(tmp_path, suffix):
    original = pixels(1, 16)
    path = tmp_path / f"g{suffix}"
    write_image(path, original, bit_depth=16)
    decoded, _ = read_image(path)
    assert decoded.bit_depth == 16
    torch.testing.assert_close(decoded.pixels, original, atol=0, rtol=0)


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_png_keeps_every_bit(tmp_path, channels):
    original = pixels(channels, 16, seed=channels)
    path = tmp_path / "c.png"
    write_image(path, original, bit_depth=16)
    samples = png_samples(path.read_bytes())
    expected = (original.permute(1, 2, 0) * 65535).round().numpy().astype(np.uint16)
    assert np.array_equal(samples, expected)
    with Image.open(path) as img:  # other readers open it too (Pillow keeps the high bytes)
        assert img.size == (11, 7) and img.mode in ("RGB", "RGBA")


def test_jpeg_is_close_and_keeps_exif(tmp_path):
    original = torch.full((3, 16, 16), 0.5)
    exif = Image.Exif()
    exif[0x010F] = "naf-test-camera"
    write_image(tmp_path / "x.jpg", original, exif=exif.tobytes(), jpeg_quality=95)
    decoded = decode_image((tmp_path / "x.jpg").read_bytes())
    assert (decoded.pixels - original).abs().max() < 2 / 255
    with Image.open(tmp_path / "x.jpg") as img:
        assert img.getexif()[0x010F] == "naf-test-camera"


def test_exif_orientation_is_applied_on_read_and_removed_on_write(tmp_path):
    img = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6
    exif[0x010F] = "maker"
    img.save(tmp_path / "r.jpg", exif=exif)
    decoded, _ = read_image(tmp_path / "r.jpg")
    assert decoded.size == (8, 4)
    ImageSink(tmp_path / "out").write("r.png", decoded.pixels, exif=decoded.exif)
    with Image.open(tmp_path / "out" / "r.png") as back:
        assert back.size == (4, 8) and back.getexif().get(0x0112) is None and back.getexif()[0x010F] == "maker"


def test_refusals_are_clear(tmp_path):
    with pytest.raises(OutputError, match="JPEG holds neither"):
        write_image(tmp_path / "a.jpg", pixels(4, 8))
    with pytest.raises(OutputError, match="unknown image suffix"):
        write_image(tmp_path / "a.gifx", pixels(3, 8))
    sink = ImageSink(tmp_path / "o", suffix=".png")
    assert sink.write("sub/x.jpg", pixels(3, 8)) == tmp_path / "o" / "sub" / "x.png"
    with pytest.raises(OutputError, match="already exists"):
        sink.write("sub/x.jpg", pixels(3, 8))
    assert not list((tmp_path / "o" / "sub").glob(".*tmp*"))
