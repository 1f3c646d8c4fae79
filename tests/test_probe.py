"""`naf eval --task probe`: composites with exact labels, segmentation scores against a brute-force
count, a probe that separates what is separable, and the command end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_runs import naf

from naf_cli.evaluation.composites import load_photos, make_composites, photo_half
from naf_cli.evaluation.probe import LinearProbe, SegmentationCounts, boundary_band, labels_at


@pytest.fixture(scope="module")
def photos(examples_dir):
    return load_photos(sorted(examples_dir.glob("*.jpg")))


def test_halves_split_each_photo_in_two(photos):
    for photo in photos:
        first, second = photo_half(photo, 0), photo_half(photo, 1)
        axis = 2 if photo.shape[2] >= photo.shape[1] else 1
        assert torch.equal(torch.cat([first, second], dim=axis), photo)


def test_composite_labels_are_exact(photos):
    made = make_composites(photos, "train", 6, 96, seed=3)
    assert len(made) == 6 and all(c.image.shape == (3, 96, 96) and c.labels.shape == (96, 96) for c in made)
    assert sum(len(c.labels.unique()) > 1 for c in made) >= 5  # nearly all hold several classes
    for composite in made:
        for label in composite.labels.unique().tolist():
            where = composite.labels == label
            assert torch.equal(composite.image[:, where], composite.sources[label][:, where])
    again = make_composites(photos, "train", 6, 96, seed=3)
    assert all(torch.equal(a.image, b.image) and torch.equal(a.labels, b.labels) for a, b in zip(made, again, strict=True))
    other = make_composites(photos, "test", 6, 96, seed=3)
    assert not torch.equal(made[0].image, other[0].image)


def test_each_region_shows_its_own_photo_and_the_right_half():
    """Photos whose halves are flat colours, distinct per photo and half: every pixel of a
    training composite has the colour of its label's first half, of a test composite its second."""
    colours = torch.rand(5, 2, 3, generator=torch.Generator().manual_seed(1))
    photos = []
    for first, second in colours:
        photo = torch.empty(3, 90, 140)
        photo[:, :, :70], photo[:, :, 70:] = first[:, None, None], second[:, None, None]
        photos.append(photo)
    for split, half in (("train", 0), ("test", 1)):
        for composite in make_composites(photos, split, 12, 48, seed=0):
            expected = colours[composite.labels, half].permute(2, 0, 1)
            torch.testing.assert_close(composite.image, expected, rtol=0, atol=1e-5)


def test_classes_are_dealt_about_equally_often(photos):
    made = make_composites(photos * 2, "train", 40, 32, seed=0)  # 8 classes
    regions = torch.zeros(8)
    for composite in made:
        for label in composite.sources:
            regions[label] += 1
    assert regions.min() >= 0.6 * regions.max()


def test_the_miou_interval_brackets_the_figure_and_is_a_point_without_spread():
    counts = SegmentationCounts(3)
    labels = torch.tensor([[0, 1], [2, 2]])
    for _ in range(5):
        counts.add(labels.clone(), labels, torch.zeros(2, 2, dtype=torch.bool))
    assert counts.miou_interval(200) == (1.0, 1.0)
    mixed = SegmentationCounts(3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        mixed.add(torch.randint(0, 3, (6, 6), generator=generator), torch.randint(0, 3, (6, 6), generator=generator),
                  torch.ones(6, 6, dtype=torch.bool))
    low, high = mixed.miou_interval(500)
    assert low < mixed.scores()["miou"] < high


def _brute_force(predicted: list[np.ndarray], labels: list[np.ndarray], classes: int, radius: int) -> dict[str, float]:
    ious = []
    for c in range(classes):
        inter = sum(int(((p == c) & (truth == c)).sum()) for p, truth in zip(predicted, labels, strict=True))
        union = sum(int(((p == c) | (truth == c)).sum()) for p, truth in zip(predicted, labels, strict=True))
        if union:
            ious.append(inter / union)
    correct = total = band_correct = band_total = 0
    for p, truth in zip(predicted, labels, strict=True):
        height, width = truth.shape
        for i in range(height):
            for j in range(width):
                total += 1
                correct += int(p[i, j] == truth[i, j])
                window = truth[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
                if (window != truth[i, j]).any():
                    band_total += 1
                    band_correct += int(p[i, j] == truth[i, j])
    return {"miou": float(np.mean(ious)), "accuracy": correct / total, "boundary_accuracy": band_correct / band_total}


@pytest.mark.parametrize("radius", [1, 2])
def test_segmentation_scores_match_a_brute_force_count(radius):
    rng = np.random.default_rng(radius)
    classes = 5
    labels = [np.repeat(np.repeat(rng.integers(0, classes - 1, (3, 4)), 4, 0), 3, 1)[:11, :10] for _ in range(3)]
    predicted = [np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, classes, t.shape)) for t in labels]
    counts = SegmentationCounts(classes)
    for p, truth in zip(predicted, labels, strict=True):
        lt = torch.from_numpy(truth)
        counts.add(torch.from_numpy(p), lt, boundary_band(lt, radius))
    expected = _brute_force(predicted, labels, classes, radius)
    got = counts.scores()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_labels_at_samples_pixel_centres():
    labels = torch.arange(64).reshape(8, 8)
    assert torch.equal(labels_at(labels, (8, 8)), labels)
    small = labels_at(labels, (4, 2))
    expected = torch.tensor([[labels[int((i + 0.5) * 2), int((j + 0.5) * 4)] for j in range(2)] for i in range(4)])
    assert torch.equal(small, expected)


def test_the_probe_separates_what_is_separable_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4000,), generator=generator)
    noise = torch.randn(4000, 6, generator=generator)
    separable = torch.cat([torch.nn.functional.one_hot(labels, 4).float() * 2, noise], dim=1)
    probe = LinearProbe(4).fit(separable[:3000], labels[:3000])
    accuracy = (probe.predict(separable[3000:].T.reshape(10, 100, 10)).reshape(-1) == labels[3000:]).float().mean()
    assert accuracy > 0.99
    blind = LinearProbe(4).fit(noise[:3000], labels[:3000])
    chance = (blind.predict(noise[3000:].T.reshape(6, 100, 10)).reshape(-1) == labels[3000:]).float().mean()
    assert chance < 0.35


def test_naf_eval_probe_end_to_end(examples_dir):
    result = naf("eval", str(examples_dir), "--task", "probe", "--crop", "64", "--composites", "2", "--factor", "4",
                 "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert report["task"] == "probe" and report["composite_size"] == 64 and report["default_checkpoint"] == "effnet-lite0-lite1"
    methods = {row["method"] for row in report["scores"]}
    assert methods == {"nearest", "bilinear", "bicubic", "jbu", "jbf", "naf (untrained)", "naf (default)"}
    for row in report["scores"]:
        assert row["factor"] == 4 and row["classes"] == 4 and row["composites"] == 2
        assert all(0.0 <= row[key] <= 1.0 for key in ("miou", "accuracy", "boundary_accuracy"))
        assert 0.0 <= row["miou_interval"][0] <= row["miou_interval"][1] <= 1.0
    assert len(report["default_checkpoint_sha256"]) == 64


@pytest.mark.parametrize(("args", "message"), [
    (["--composites", "0"], "--composites must be 1 or more"),
    (["--factor", "0"], "--factor 0 is out of range for the probe"),
    (["--crop", "8"], "--crop 8 is too small"),
])
def test_probe_options_are_checked_in_one_line(examples_dir, args, message):
    from typer.testing import CliRunner

    from naf_cli.cli.app import app

    result = CliRunner().invoke(app, ["eval", str(examples_dir), "--task", "probe", *args, "--device", "cpu"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "fix:" in errors[0] and "Traceback" not in result.stderr


def test_one_photo_is_not_enough_for_a_probe(tmp_path, examples_dir):
    shutil.copy(examples_dir / "chelsea.jpg", tmp_path / "chelsea.jpg")
    from typer.testing import CliRunner

    from naf_cli.cli.app import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--task", "probe", "--device", "cpu"])
    assert result.exit_code == 2 and "needs two photos or more" in result.stderr
