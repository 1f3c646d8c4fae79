import pytest
import torch
from PIL import Image

from naf_cli.errors import ImageReadError
from naf_cli.images import load_image
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
