"""`naf pca`: one seeded basis across images, checked against an SVD, pictures whose
panels are exactly that basis applied, from images and from feature files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from naf_cli.backbones import load_backbone
from naf_cli.images import read_image
from naf_cli.pca import fit_basis, sample_positions
from naf_cli.pca import render as pca_render
from naf_cli.pca.basis import fit_on
from naf_cli.pca.panels import GAP, LABEL_HEIGHT, fit_height
from naf_cli.pca.render import PcaSettings, to_rgb
from naf_cli.pipeline.transforms import ExtractFeatures
from naf_cli.sampling import seeded_choice

CLI = [sys.executable, "-m", "naf_cli"]


def _naf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def test_basis_matches_svd_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3
    basis = fit_basis(data, 3)
    centred = (data - data.mean(0)).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    for axis, reference in zip(basis.axes, vh[:3], strict=True):
        assert abs(float(axis @ reference)) == pytest.approx(1.0, abs=1e-8)  # same direction up to sign
        assert float(axis[axis.abs().argmax()]) > 0  # the sign rule
    torch.testing.assert_close(basis.axes @ basis.axes.T, torch.eye(3, dtype=torch.float64))
    again = fit_basis(data.clone(), 3)
    assert torch.equal(again.axes, basis.axes) and torch.equal(again.low, basis.low)


def test_projection_maps_the_percentiles_to_0_and_1():
    data = torch.randn(1000, 6, generator=torch.Generator().manual_seed(1))
    basis = fit_basis(data, 3)
    colours = basis.project(data.T.reshape(6, 1000, 1).float())
    assert colours.shape == (3, 1000, 1) and colours.min() >= 0 and colours.max() <= 1
    saturated = (colours == 0).float().mean(1).squeeze()
    assert torch.all((saturated > 0.005) & (saturated < 0.02))  # about 1% below the 1st percentile


def test_sampling_is_seeded():
    maps = torch.randn(8, 20, 30)
    a = sample_positions(maps, 50, torch.Generator().manual_seed(3))
    b = sample_positions(maps, 50, torch.Generator().manual_seed(3))
    c = sample_positions(maps, 50, torch.Generator().manual_seed(4))
    assert a.shape == (50, 8) and torch.equal(a, b) and not torch.equal(a, c)


def test_tiles_give_the_same_colours(monkeypatch):
    maps = torch.randn(16, 40, 30)
    basis = fit_basis(maps.reshape(16, -1).T, 3)
    whole = to_rgb(lambda r0, r1: maps[:, r0:r1], tuple(maps.shape), basis, PcaSettings())
    monkeypatch.setattr(pca_render, "TILE_BYTES", 16 * 30 * 4 * 3)  # three rows a tile
    tiled = to_rgb(lambda r0, r1: maps[:, r0:r1], tuple(maps.shape), basis, PcaSettings())
    assert torch.equal(whole, tiled)


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory, examples_dir):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(examples_dir / name, folder / name)
    return folder


def _panel(picture: np.ndarray, index: int, widths: list[int]) -> np.ndarray:
    x = sum(widths[:index]) + GAP * index
    return picture[LABEL_HEIGHT:, x:x + widths[index]]


def test_pictures_from_images_share_one_seeded_basis(two_photos, tmp_path):
    """The basis is fitted on one image (--fit-images 1); the other image's low-res panel is
    exactly that basis applied to its own features."""
    out = tmp_path / "pca"
    args = ["pca", str(two_photos), "--vfm", "effnet-lite0", "--upsampler", "naf", "bilinear", "--scale", "2",
            "--height", "64", "--fit-images", "1", "--seed", "5", "--device", "cpu", "-o", str(out)]
    result = _naf(*args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.png", "coffee.png"]
    settings = PcaSettings(fit_images=1, seed=5, height=64)
    extract = ExtractFeatures(load_backbone("effnet-lite0"), 448)
    photos = {name: read_image(two_photos / name)[0] for name in ("chelsea.jpg", "coffee.jpg")}
    fitted_on = seeded_choice(sorted(photos), 1, 5)
    basis = fit_on(iter([extract(photos[fitted_on[0]]).features.tensor()]), 3, settings.seed, settings.samples)
    for name, photo in photos.items():
        picture = np.asarray(Image.open(out / name.replace(".jpg", ".png")).convert("RGB"))
        lr = extract(photo).features.tensor()
        expected = fit_height(to_rgb(lambda r0, r1, lr=lr: lr[:, r0:r1], tuple(lr.shape), basis, settings), 64)
        widths = [round(photo.size[1] * 64 / photo.size[0]), expected.shape[-1], expected.shape[-1], expected.shape[-1]]
        assert picture.shape == (64 + LABEL_HEIGHT, sum(widths) + 3 * GAP, 3)
        panel = _panel(picture, 1, widths).astype(int)
        assert np.abs(panel - (expected.permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)).max() <= 1
        # the two upsampled panels differ from each other and from the low-res one
        assert not np.array_equal(_panel(picture, 2, widths), _panel(picture, 3, widths))
    again = tmp_path / "again"
    assert _naf(*args[:-1], str(again)).returncode == 0
    assert (again / "chelsea.png").read_bytes() == (out / "chelsea.png").read_bytes()  # deterministic


def test_pictures_from_feature_files(two_photos, tmp_path):
    lr, hr, out = tmp_path / "lr.h5", tmp_path / "hr.h5", tmp_path / "pca"
    assert _naf("extract", str(two_photos), "--vfm", "effnet-lite0", "-o", str(lr), "--device", "cpu").returncode == 0
    result = _naf("upsample", str(lr), "--upsampler", "bilinear", "--scale", "4", "-o", str(hr), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    result = _naf("pca", str(lr), str(hr), "--upsampler", "nearest", "--scale", "4", "--height", "48", "--device", "cpu", "-o", str(out))
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(out / "chelsea.png").convert("RGB"))
    # photo | low-res (from lr.h5) | bilinear (from hr.h5) | nearest (computed): four panels
    assert picture.shape[0] == 48 + LABEL_HEIGHT
    white_columns = np.where((picture[LABEL_HEIGHT:] == 255).all(axis=(0, 2)))[0]
    gaps = [c for c in white_columns if c + 1 in white_columns and c + GAP - 1 in white_columns and c - 1 not in white_columns]
    assert len(gaps) >= 3


def test_bad_pca_inputs_say_what_to_do(tmp_path, examples_dir):
    quick = ["--upsampler", "bilinear", "--scale", "2", "--long-side", "224", "--height", "48", "--device", "cpu"]
    default = _naf("pca", str(examples_dir / "chelsea.jpg"), *quick, "-o", str(tmp_path / "default"))
    named = _naf("pca", str(examples_dir / "chelsea.jpg"), *quick, "--vfm", "effnet-lite0", "-o", str(tmp_path / "named"))
    assert default.returncode == 0 and named.returncode == 0, default.stderr + named.stderr
    # images without --vfm go through upsample's default backbone, as `naf upsample` does
    assert (tmp_path / "default" / "chelsea.png").read_bytes() == (tmp_path / "named" / "chelsea.png").read_bytes()
    result = _naf("pca", str(examples_dir / "chelsea.jpg"), "--vfm", "effnet-lite0", "--components", "0", "-o", str(tmp_path / "p"))
    assert result.returncode == 2 and "--components takes 1 to 3 component numbers" in result.stderr


def test_a_skipped_input_exits_3_as_in_every_command(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(examples_dir / "chelsea.jpg").resize((96, 64)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    result = _naf("pca", str(folder), "-o", str(tmp_path / "p"), "--upsampler", "bilinear", "--scale", "2",
                  "--long-side", "64", "--height", "32", "--device", "cpu")
    assert result.returncode == 3, result.stderr
    assert str(folder / "broken.png") in result.stderr and "wrote 1 PCA picture " in result.stdout
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["good.png"]
