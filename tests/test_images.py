import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from naf_cli.errors import ImageReadError
from naf_cli.images import load_image, read_image
from naf_cli.pipeline.image_sink import encode_png16
from naf_cli.pipeline.sources import list_images


def test_list_images_recurses_sorts_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".cache").mkdir()
    for name in ("b/z.PNG", "a.jpg", "._a.jpg", ".cache/x.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b/z.PNG"]


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        list_images(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_odd_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    Image.new(mode, (7, 5)).save(path)
    image = load_image(path)
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (3, 8, 4)


def test_corrupt_file_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match=r"bad\.png"):
        load_image(tmp_path / "bad.png")


def test_sixteen_bit_images_keep_their_values(tmp_path):
    img = Image.new("I;16", (4, 3))
    img.putpixel((1, 1), 32768)
    img.save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (3, 3, 4)
    assert abs(float(image[0, 1, 1]) - 32768 / 65535) < 1e-6 and float(image[0, 0, 0]) == 0.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_colour_pngs_keep_16_bits_and_turn_upright_like_pillow(tmp_path, orientation):
    """Pillow decodes 48-bit PNGs to 8 bits; naf keeps all 16, oriented as Pillow orients the 8-bit image."""
    g = np.random.default_rng(orientation)
    samples = g.integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)  # H 5, W 7: a rotation swaps them
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "deep.png"
    path.write_bytes(encode_png16(samples, exif.tobytes()))
    decoded, _ = read_image(path)
    with Image.open(path) as img:
        pillow = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))  # its 8 bits: each sample's high byte
    assert decoded.bit_depth == 16
    ours = (decoded.pixels.permute(1, 2, 0).double().numpy() * 65535).round().astype(np.int64)
    assert ours.shape == pillow.shape
    assert np.array_equal(ours >> 8, pillow)
    assert set(np.unique(ours % 256)) != {0}  # the low bytes are there


def test_sixteen_bit_grey_alpha_and_rgba_pngs(tmp_path):
    g = np.random.default_rng(0)
    for channels, expected in ((2, 4), (4, 4)):
        samples = g.integers(0, 65536, size=(3, 4, channels), dtype=np.uint16)
        path = tmp_path / f"deep{channels}.png"
        path.write_bytes(encode_png16(samples))
        decoded, _ = read_image(path)
        values = (decoded.pixels.double() * 65535).round().long()
        assert decoded.bit_depth == 16 and values.shape[0] == expected
        assert torch.equal(values[-1], torch.from_numpy(samples[..., -1].astype(np.int64)))  # alpha
        assert torch.equal(values[0], torch.from_numpy(samples[..., 0].astype(np.int64)))
    (tmp_path / "bad.png").write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageReadError, match=r"bad\.png: truncated or corrupt"):
        read_image(tmp_path / "bad.png")
