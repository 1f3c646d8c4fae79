"""naf upsample --pca K: the stored maps are the projection of an ordinary run's maps by a
basis fitted on the run's low-resolution features, stored under /pca; resumes agree on the
basis; real backbone, real runs, checked against plain numpy."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_runs import naf

from naf_cli.features import FeatureFile

RUN = ["upsample", "--vfm", "effnet-lite0", "--long-side", "224", "--scale", "8", "--device", "cpu"]
PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, examples_dir) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(examples_dir / name, folder / name)
    return folder


def _run(folder: Path, out: Path, *extra: str) -> Path:
    result = naf(*RUN, str(folder), "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def ordinary(photos, tmp_path_factory) -> Path:
    return _run(photos, tmp_path_factory.mktemp("ordinary") / "full.h5", "--out-dtype", "float32")


@pytest.fixture(scope="module")
def reduced(photos, tmp_path_factory) -> Path:
    return _run(photos, tmp_path_factory.mktemp("reduced") / "pca.h5", "--out-dtype", "float32", "--pca", "32")


def _stored_bytes(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return sum(f["features"][name].id.get_storage_size() for name in f["features"])


def test_stored_maps_are_the_projection_of_an_ordinary_runs_maps(ordinary, reduced):
    full, small = FeatureFile(ordinary), FeatureFile(reduced)
    assert full.pca is None and small.pca is not None
    mean, components = small.pca.mean.astype(np.float64), small.pca.components.astype(np.float64)
    assert components.shape == (32, 112) and mean.shape == (112,)
    assert sorted(small) == sorted(full) == sorted(PHOTOS)
    for name in PHOTOS:
        x, y = full[name].astype(np.float64), small[name]
        assert y.shape == (32, *x.shape[1:])
        expected = np.einsum("kc,chw->khw", components, x - mean[:, None, None])
        assert np.abs(y - expected).max() <= 1e-4 * np.abs(expected).max(), name
    assert small.attrs["pca_components"] == 32 and small.attrs["pca_channels"] == 112
    assert _stored_bytes(reduced) <= 0.40 * _stored_bytes(ordinary)


def test_float16_pca_output_is_at_most_40_percent_of_the_ordinary_bytes(photos, ordinary, tmp_path):
    """The default dtype: 32 of 112 channels and chunks that fit the data (the ordinary run, in float32, halved)."""
    small = _run(photos, tmp_path / "pca16.h5", "--pca", "32")
    assert _stored_bytes(small) <= 0.40 * _stored_bytes(ordinary) / 2


def test_the_basis_is_the_pca_of_the_runs_low_resolution_features(photos, reduced, tmp_path):
    """Few positions (224 px, stride 16): every low-resolution vector of the three photos is
    fitted on, so the basis is their exact PCA, computed here with numpy from naf extract."""
    low = tmp_path / "low.h5"
    result = naf("extract", "--vfm", "effnet-lite0", "--long-side", "224", "--device", "cpu", "--out-dtype", "float32",
                 str(photos), "-o", str(low))
    assert result.returncode == 0, result.stderr
    with FeatureFile(low) as extracted:
        vectors = np.concatenate([extracted[name].reshape(112, -1).T.astype(np.float64) for name in PHOTOS])
    values, vectors_ = np.linalg.eigh(np.cov(vectors, rowvar=False))
    order = np.argsort(values)[::-1]
    basis = FeatureFile(reduced).pca
    assert basis is not None
    np.testing.assert_allclose(basis.mean, vectors.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(basis.explained_variance_ratio, values[order[:32]] / values.sum(), rtol=1e-3, atol=1e-6)
    gaps = -np.diff(values[order[:11]]) / values[order[0]]
    assert gaps.min() > 1e-3  # the first ten axes are well separated, so they are determined up to sign
    for k in range(10):
        axis = vectors_[:, order[k]]
        axis = axis * np.sign(axis[np.argmax(np.abs(axis))])  # the file's sign rule: largest entry positive
        np.testing.assert_allclose(basis.components[k], axis, atol=2e-3)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(32), atol=1e-5)


def test_reconstruct_gives_the_features_less_what_the_components_leave_out(ordinary, reduced):
    full, small = FeatureFile(ordinary), FeatureFile(reduced)
    for name in PHOTOS:
        x = full[name].astype(np.float64)
        back = small.reconstruct(name)
        assert back.shape == x.shape and back.dtype == np.float32
        centred = x - small.pca.mean[:, None, None]
        # the components are orthonormal: what is lost is the part of x outside their span
        residual = np.sum((x - back) ** 2)
        assert residual == pytest.approx(np.sum(centred ** 2) - np.sum(small[name].astype(np.float64) ** 2), rel=1e-3)
        assert residual < np.sum(centred ** 2)  # 32 components keep most of it


def test_naf_info_shows_the_components_and_the_variance_they_keep(reduced):
    import json

    result = naf("info", str(reduced), "--json")
    assert result.returncode == 0, result.stderr
    pca = json.loads(result.stdout)["pca"]
    assert pca["pca_components"] == 32 and len(pca["explained_variance_ratio"]) == 32
    assert 0 < pca["pca_variance_kept"] <= 1
    assert pca["pca_variance_kept"] == pytest.approx(sum(pca["explained_variance_ratio"]), abs=1e-5)
    text = naf("info", str(reduced)).stdout
    assert "32 of 112 channels" in text and "% of the variance" in text


def test_a_resume_keeps_the_basis_and_a_changed_fit_is_refused(photos, tmp_path):
    out = _run(photos, tmp_path / "r.h5", "--pca", "16", "--shard-images", "1")
    before = FeatureFile(out)
    first = {name: before[name] for name in before}
    sha = before.attrs["pca_sha256"]
    shards = sorted((tmp_path / "r.h5.shards").glob("shard-*.h5"))
    assert len(shards) == 3
    shards[1].unlink()
    again = naf(*RUN, str(photos), "-o", str(out), "--pca", "16", "--shard-images", "1")
    assert again.returncode == 0, again.stderr
    assert "the basis of the run being resumed" in again.stderr and "2 image(s) already done" in again.stderr
    after = FeatureFile(out)
    assert after.attrs["pca_sha256"] == sha and all(np.array_equal(after[name], first[name]) for name in first)
    # every shard gone (run.json kept): the basis is fitted again, and it is the same one
    for shard in (tmp_path / "r.h5.shards").glob("shard-*.h5"):
        shard.unlink()
    refit = naf(*RUN, str(photos), "-o", str(out), "--pca", "16", "--shard-images", "1")
    assert refit.returncode == 0, refit.stderr
    assert "fitted on 3 image(s)" in refit.stderr
    assert FeatureFile(out).attrs["pca_sha256"] == sha
    changed = naf(*RUN, str(photos), "-o", str(out), "--pca", "16", "--pca-fit", "2", "--shard-images", "1")
    errors = [line for line in changed.stderr.splitlines() if line.startswith("error:")]
    assert changed.returncode == 2 and len(errors) == 1, changed.stderr
    assert "pca_fit" in errors[0] and "fix:" in errors[0]


def test_pca_basis_takes_another_outputs_basis(photos, reduced, tmp_path):
    out = _run(photos, tmp_path / "b.h5", "--pca-basis", str(reduced), "--out-dtype", "float32")
    theirs, mine = FeatureFile(reduced), FeatureFile(out)
    assert mine.attrs["pca_sha256"] == theirs.attrs["pca_sha256"]
    assert all(np.array_equal(mine[name], theirs[name]) for name in PHOTOS)  # the same run, the same basis
    assert "taken from" in naf(*RUN, str(photos), "-o", str(tmp_path / "c.h5"), "--pca-basis", str(reduced)).stderr


@pytest.mark.parametrize("options,words", [
    (["--pca", "0"], "--pca must be at least 1"),
    (["--pca", "200"], "more components than the 112 channels"),
    (["--pca-fit", "4"], "--pca-fit applies to --pca"),
    (["--pca", "8", "--pca-fit", "0"], "--pca-fit must be at least 1"),
])
def test_bad_pca_options_are_one_line_before_any_work(photos, tmp_path, options, words):
    out = tmp_path / "bad.h5"
    result = naf(*RUN, str(photos), "-o", str(out), *options)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1 and words in errors[0] and "fix:" in errors[0], result.stderr
    assert not out.exists() and not (tmp_path / "bad.h5.shards").exists()


def test_a_basis_file_without_a_basis_is_refused(photos, ordinary, tmp_path):
    result = naf(*RUN, str(photos), "-o", str(tmp_path / "x.h5"), "--pca-basis", str(ordinary))
    assert result.returncode == 2 and "holds no PCA basis" in result.stderr, result.stderr


def test_inputs_added_to_a_pca_run_keep_its_basis(photos, tmp_path, examples_dir):
    """The default fit (every input up to 256) is one setting, whatever the number of inputs: a
    rerun over a folder that gained a photo resumes with the folder's basis."""
    folder = tmp_path / "growing"
    shutil.copytree(photos, folder)
    out = _run(folder, tmp_path / "g.h5", "--pca", "8")
    sha = FeatureFile(out).attrs["pca_sha256"]
    shutil.copy(examples_dir / "rocket.jpg", folder / "rocket.jpg")
    again = naf(*RUN, str(folder), "-o", str(out), "--pca", "8")
    assert again.returncode == 0, again.stderr
    assert "the basis of the run being resumed" in again.stderr and "fitting" not in again.stderr
    grown = FeatureFile(out)
    assert sorted(grown) == sorted([*PHOTOS, "rocket.jpg"]) and grown.attrs["pca_sha256"] == sha


def test_a_rerun_with_other_pca_options_is_refused_before_fitting(photos, tmp_path):
    out = _run(photos, tmp_path / "o.h5", "--pca", "8")
    for options in (["--pca", "4"], ["--pca", "8", "--pca-fit", "2"], []):
        result = naf(*RUN, str(photos), "-o", str(out), *options)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and "fix:" in errors[0], result.stderr
        assert "fitting" not in result.stderr  # refused before the backbone passes of a fit
    assert "pca_components=4" in naf(*RUN, str(photos), "-o", str(out), "--pca", "4").stderr


def test_too_few_feature_vectors_for_the_components_is_one_line(photos, tmp_path):
    """A 16-pixel long side gives one feature vector per photo: three vectors cannot fit 8 axes."""
    result = naf(*RUN[:-4], "--long-side", "16", "--device", "cpu", str(photos), "-o", str(tmp_path / "t.h5"), "--pca", "8")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "3 feature vector(s)" in errors[0] and "cannot fit 8 components" in errors[0] and "fix:" in errors[0]


def test_a_basis_of_another_backbone_with_as_many_channels_is_refused(photos, reduced, tmp_path):
    """effnet-lite1's features have 112 channels too: the channel count alone would let it pass."""
    out = tmp_path / "lite1.h5"
    result = naf("upsample", "--vfm", "effnet-lite1", "--long-side", "224", "--scale", "2", "--device", "cpu", str(photos),
                 "-o", str(out), "--pca-basis", str(reduced))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "fitted on other features" in errors[0] and "effnet-lite0" in errors[0] and "fix:" in errors[0]
    assert not out.exists()


def test_a_pca_output_rerun_without_pca_names_the_option(photos, reduced):
    result = naf(*RUN, str(photos), "-o", str(reduced), "--out-dtype", "float32")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "was written with --pca" in errors[0], result.stderr
