"""--output-size grid|image|HxW: the sizes written, and the pixel mapping of docs/format.md."""

from __future__ import annotations

import h5py
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from naf_cli.backbones import load_backbone
from naf_cli.cli.app import app
from naf_cli.errors import OptionError
from naf_cli.images import load_image
from naf_cli.pipeline.sizes import OutputSize
from naf_cli.pipeline.transforms import resize

runner = CliRunner()


def test_parse_rules():
    assert OutputSize.parse("grid") == OutputSize("grid", 16.0)
    assert OutputSize.parse("grid", 2.5).resolve((300, 451), (19, 28)) == (48, 70)
    assert OutputSize.parse("image").resolve((300, 451), (19, 28)) == (300, 451)
    assert OutputSize.parse("120x80").resolve((300, 451), (19, 28)) == (120, 80)
    assert OutputSize.parse("grid", 4).largest(16, 448) == (112, 112)
    assert OutputSize.parse("image").largest(16, 448) is None
    for bad in ("0x5", "x", "big", "-3x4"):
        with pytest.raises(OptionError):
            OutputSize.parse(bad)


@pytest.mark.parametrize("mode,expected", [("image", (300, 451)), ("96x160", (96, 160)), ("grid", (304, 448))])
def test_output_size_modes_through_the_cli(tmp_path, examples_dir, mode, expected):
    out = tmp_path / "o.h5"
    result = runner.invoke(app, ["upsample", str(examples_dir / "chelsea.jpg"), "--upsampler", "bilinear",
                                 "--output-size", mode, "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        data = f["features/chelsea.jpg"]
        assert data.shape == (112, *expected)
        assert tuple(data.attrs["output_size"]) == expected
        assert tuple(data.attrs["source_size"]) == (300, 451)


def test_image_mode_maps_feature_cells_onto_source_pixels(tmp_path, examples_dir):
    """docs/format.md: with --output-size image, output pixel (y, x) is source pixel (y, x), and
    the nearest upsampler copies cell floor(y * h / H) there."""
    out = tmp_path / "n.h5"
    result = runner.invoke(app, ["upsample", str(examples_dir / "chelsea.jpg"), "--upsampler", "nearest",
                                 "--output-size", "image", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    image = load_image(examples_dir / "chelsea.jpg")
    with torch.no_grad():
        grid = load_backbone("effnet-lite0")(resize(image, (304, 448)))[0]
    h, w = grid.shape[-2:]
    with h5py.File(out, "r") as f:
        stored = torch.from_numpy(f["features/chelsea.jpg"][()]).float()
    for y, x in [(0, 0), (299, 450), (150, 225), (17, 400)]:
        cell = (y * h // 300, x * w // 451)
        torch.testing.assert_close(stored[:, y, x], grid[:, cell[0], cell[1]].half().float())
    assert F.mse_loss(stored, stored).item() == 0
