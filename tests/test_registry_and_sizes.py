import pytest
import torch

from naf_cli.errors import UnknownNameError
from naf_cli.pipeline.sizes import backbone_input_size, chunk_shape, output_size, stored_bytes
from naf_cli.upsamplers import UPSAMPLERS, load_upsampler


def test_every_upsampler_has_the_same_signature():
    image = torch.rand(2, 3, 40, 56)
    features = torch.randn(2, 8, 5, 7)
    for name in UPSAMPLERS:
        up, info = load_upsampler(name)
        assert info.name == name
        out = up(image, features, (37, 50))
        assert out.shape == (2, 8, 37, 50), name


def test_interpolation_upsamplers_keep_values_at_integer_ratio():
    features = torch.randn(1, 4, 3, 3)
    up, _ = load_upsampler("nearest")
    out = up(torch.rand(1, 3, 12, 12), features, (12, 12))
    assert torch.equal(out[..., ::4, ::4], features)


def test_unknown_upsampler_lists_known_ones():
    with pytest.raises(UnknownNameError, match="naf, nearest, bilinear, bicubic"):
        load_upsampler("lanczos")


@pytest.mark.parametrize("image,patch,expected", [
    ((300, 451), 16, (304, 448)),   # 300 * 448 / 451 = 298 -> 19 patches
    ((1000, 1000), 14, (448, 448)),
    ((1536, 864), 14, (448, 252)),  # 864 * 448 / 1536 = 252 = 18 * 14
    ((10, 2000), 16, (16, 448)),    # never below one patch
])
def test_backbone_input_size(image, patch, expected):
    assert backbone_input_size(image, patch) == expected


def test_output_size_and_chunks():
    assert output_size((19, 28), 16) == (304, 448)
    assert output_size((19, 28), 2.5) == (48, 70)
    c, th, tw = chunk_shape(768, 448, 448)
    assert c == 64 and c * th * tw * 2 <= 1 << 20 and th == tw
    assert chunk_shape(112, 448, 448)[0] == 56  # two equal blocks, no padding channels
    assert chunk_shape(4, 10, 10) == (4, 10, 10)


@pytest.mark.parametrize("itemsize", [2, 4])
def test_chunks_pad_the_data_by_at_most_5_percent_and_stay_within_a_mebibyte(itemsize):
    """Edge chunks are stored whole: a 112 x 304 x 448 map in tiles of 96 took 1.33x its bytes."""
    import math

    sides = [1, 2, 5, 13, 47, 64, 65, 96, 97, 150, 193, 240, 304, 336, 448, 449, 500, 897, 1792, 4000]
    for channels in (1, 3, 32, 63, 64, 65, 100, 112, 129, 130, 384, 768, 1025, 1536):
        for height in sides:
            for width in sides[::3]:
                chunk = chunk_shape(channels, height, width, itemsize)
                data = channels * height * width * itemsize
                assert stored_bytes((channels, height, width), chunk, itemsize) <= 1.05 * data, (channels, height, width, chunk)
                assert math.prod(chunk) * itemsize <= 1 << 20, (channels, height, width, chunk)
                assert chunk[0] <= 64 and chunk[1] <= height and chunk[2] <= width
    # the example photo's map: within 1%, in tiles of about a mebibyte
    chunk = chunk_shape(112, 304, 448, itemsize)
    assert stored_bytes((112, 304, 448), chunk, itemsize) <= 1.01 * 112 * 304 * 448 * itemsize
    assert math.prod(chunk) * itemsize > (1 << 20) // 2


def test_every_package_is_in_the_wheel_list():
    """pyproject lists packages explicitly (models/ maps to naf_cli.models); a package missing
    there would be absent from a wheel install although an editable install finds it."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "naf_cli").rglob("__init__.py")}
    assert found | {"naf_cli.models"} == listed
