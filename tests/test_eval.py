"""`naf eval`: the reconstruction protocol's sizes, edge band and metrics, and a real CLI run
whose bilinear row is recomputed here independently from the photos and the backbone."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_runs import naf
from PIL import Image

from naf_cli.evaluation.metrics import edge_band, reconstruction_metrics
from naf_cli.evaluation.pairs import target_image


def test_target_images_are_never_enlarged_and_fit_the_grid():
    photo = torch.rand(3, 300, 451)  # chelsea's size
    image = target_image(photo, 2, 16)
    # short side 9 cells x 16 px x 2; long side 451 * 288 / 300 = 433, cropped to a multiple of 32
    assert image is not None and tuple(image.shape) == (3, 288, 416)
    assert target_image(photo, 4, 16) is None  # 7 x 16 x 4 = 448 > 300: would need enlarging
    wide = target_image(torch.rand(3, 500, 2000), 2, 16)
    assert wide is not None and tuple(wide.shape) == (3, 288, 576)  # at most twice the short side
    tall = target_image(torch.rand(3, 1000, 460), 4, 14)
    assert tall is not None and tall.shape[2] == 7 * 14 * 4 and tall.shape[1] % (14 * 4) == 0


def test_the_edge_band_holds_the_cells_a_strong_edge_crosses():
    image = torch.zeros(3, 64, 64)
    image[:, :, 40:] = 1.0  # a step between pixels 39 and 40: inside cell column 2 of 4 (32..47)
    band = edge_band(image, (4, 4))
    assert band[:, 2].all() and not band[:, [0, 1, 3]].any()
    assert not edge_band(torch.full((3, 64, 64), 0.5), (4, 4)).any()
    faint = torch.zeros(3, 64, 64)
    faint[:, :, 40:] = 0.1  # a Sobel response of 0.05 at most: below the threshold
    assert not edge_band(faint, (4, 4)).any()


def test_metrics_are_the_plain_formulas():
    torch.manual_seed(0)
    prediction, target = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    band = torch.zeros(3, 4, dtype=torch.bool)
    band[1, 2] = True
    scores = reconstruction_metrics(prediction, target, band)
    assert math.isclose(scores["mse"], float(((prediction - target) ** 2).mean()), rel_tol=1e-6)
    p, t = prediction[:, 1, 2], target[:, 1, 2]
    assert math.isclose(scores["edge_mse"], float(((p - t) ** 2).mean()), rel_tol=1e-6)
    assert math.isclose(scores["edge_cosine"], float(p @ t / (p.norm() * t.norm())), rel_tol=1e-6)
    assert math.isnan(reconstruction_metrics(prediction, target, band & False)["edge_mse"])


def _seam_by_loops(features, factor):
    """The seam contrast written out pair by pair, from its definition."""
    channels, height, width = features.shape
    across, inside = [], []
    for y in range(height):
        for x in range(1, width):
            step = sum(abs(float(features[c, y, x] - features[c, y, x - 1])) for c in range(channels)) / channels
            (across if x % factor == 0 else inside).append(step)
    for y in range(1, height):
        for x in range(width):
            step = sum(abs(float(features[c, y, x] - features[c, y - 1, x])) for c in range(channels)) / channels
            (across if y % factor == 0 else inside).append(step)
    return (sum(across) / len(across)) / (sum(inside) / len(inside))


def test_seam_and_variance_measures_against_their_definitions():
    from naf_cli.evaluation.metrics import seam_contrast

    torch.manual_seed(1)
    target = torch.randn(3, 6, 8)
    prediction = torch.randn(3, 6, 8)
    for factor in (2, 3):
        assert math.isclose(seam_contrast(prediction, factor), _seam_by_loops(prediction, factor), rel_tol=1e-6)
    scores = reconstruction_metrics(prediction, target, torch.zeros(6, 8, dtype=torch.bool), 2)
    assert math.isclose(scores["seam"], _seam_by_loops(prediction, 2) / _seam_by_loops(target, 2), rel_tol=1e-6)
    variance = sum(float(prediction[c].flatten().var()) for c in range(3)) / sum(float(target[c].flatten().var()) for c in range(3))
    assert math.isclose(scores["variance"], variance, rel_tol=1e-6)
    # nearest upsampling is constant inside cells: every step is at a boundary, an extreme grid
    blocky = torch.randn(3, 3, 4).repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert math.isinf(seam_contrast(blocky, 2))
    smooth = (torch.arange(8.0)[None, :] + torch.arange(6.0)[:, None]).expand(3, 6, 8) / 10  # one step everywhere: no grid
    assert math.isclose(seam_contrast(smooth, 2), 1.0, rel_tol=1e-5)
    assert math.isnan(reconstruction_metrics(prediction, target, torch.zeros(6, 8, dtype=torch.bool))["seam"])


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory, examples_dir):
    folder = tmp_path_factory.mktemp("eval")
    shutil.copy(examples_dir / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(examples_dir / "astronaut.jpg", folder / "astronaut.jpg")
    return folder


def test_naf_eval_bilinear_row_matches_an_independent_computation(two_photos):
    result = naf("eval", str(two_photos), "--factor", "2", "4", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {(row["method"], row["factor"]): row for row in report["scores"]}
    assert {"nearest", "bilinear", "bicubic", "jbu", "jbf", "naf (untrained)", "naf (default)"} == {m for m, _ in rows}
    assert rows[("bilinear", 2)]["images"] == 2 and rows[("bilinear", 4)]["images"] == 1  # chelsea is too small for x4
    assert "chelsea.jpg" in result.stderr and "x4 leaves out 1 photo" in result.stderr
    assert report["default_checkpoint"] == "effnet-lite0-lite1" and "checkpoint auto: effnet-lite0-lite1" in result.stderr

    from naf_cli.backbones import load_backbone

    backbone = load_backbone("effnet-lite0")
    errors = []
    for name in ("astronaut.jpg", "chelsea.jpg"):  # written out from the protocol in docs/quality.md
        photo = torch.from_numpy(np.array(Image.open(two_photos / name).convert("RGB"))).permute(2, 0, 1).float() / 255
        h, w = photo.shape[1:]
        short = 9 * 16 * 2
        height, width = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
        big = F.interpolate(photo[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        width_kept, height_kept = min(width // 32 * 32, 576), min(height // 32 * 32, 576)
        top, left = (height - height_kept) // 2, (width - width_kept) // 2
        big = big[:, :, top:top + height_kept, left:left + width_kept].clamp(0, 1)
        small = F.interpolate(big, size=(height_kept // 2, width_kept // 2), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            target, low = backbone(big), backbone(small)
        guess = F.interpolate(low, size=target.shape[-2:], mode="bilinear", align_corners=False)
        errors.append(float(((guess.double() - target.double()) ** 2).mean()))
    assert math.isclose(rows[("bilinear", 2)]["mse"], sum(errors) / 2, rel_tol=1e-5)


def test_naf_eval_refuses_what_it_cannot_do(two_photos):
    for args, message in ((["--factor", "3"], "not part of the protocol"), (["--task", "restore"], "not available"),
                          (["--split", "test"], "use all, train or validation")):
        result = naf("eval", str(two_photos), *args, "--device", "cpu")
        assert result.returncode == 2 and message in result.stderr and "fix:" in result.stderr


def test_a_factor_no_photo_is_large_enough_for_shows_no_table_of_nan(tmp_path, examples_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(examples_dir / "chelsea.jpg", folder)  # 451 x 300: large enough for x2 (288), not x8 (896)
    result = naf("eval", str(folder), "--factor", "2", "8", "--checkpoint", "effnet-lite0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "x2: 1 photos" in result.stdout and "x8:" not in result.stdout and "nan" not in result.stdout.lower()
    assert "note: x8 leaves out 1 photo(s) smaller than its target: chelsea.jpg" in result.stderr
    as_json = naf("eval", str(folder), "--factor", "2", "8", "--json", "--device", "cpu")
    scores = json.loads(as_json.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["scores"]
    assert {score["factor"] for score in scores} == {2} and all(score["images"] == 1 for score in scores)
    Image.open(examples_dir / "chelsea.jpg").resize((150, 100)).save(folder / "chelsea.jpg")
    none = naf("eval", str(folder), "--factor", "2", "8", "--device", "cpu")
    errors = [line for line in none.stderr.splitlines() if line.startswith("error:")]
    assert none.returncode == 2 and len(errors) == 1 and "input(s)" not in none.stderr, none.stderr  # before any work
    assert "no photo in" in errors[0] and "short side of 288 pixels" in errors[0] and "fix: " in errors[0]
