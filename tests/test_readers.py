"""Readers: FeatureFile, Datasets in DataLoader workers (fork and spawn), upsampling on read,
and `naf upsample lr.h5` for files written by naf or by another tool."""

from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_runs import NAF
from torch.utils.data import DataLoader

from naf_cli.datasets import FeatureDataset, UpsamplingDataset
from naf_cli.errors import NafError
from naf_cli.features import FeatureFile
from naf_cli.pipeline.sizes import OutputSize

NAMES = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


@pytest.fixture(scope="module")
def extract_file(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("lr") / "lr.h5"
    result = subprocess.run([*NAF, "extract", str(examples_dir), "-o", str(out), "--out-dtype", "float32"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def test_feature_file_is_a_mapping_with_tiles(extract_file):
    features = FeatureFile(extract_file)
    assert list(features) == NAMES and len(features) == 4 and "coffee.jpg" in features
    with h5py.File(extract_file, "r") as f:
        for name in NAMES:
            assert np.array_equal(features[name], f["features"][name][()])
    tile = features.dataset("chelsea.jpg")[10:20, 2:5, 3:9]
    assert tile.shape == (10, 3, 6) and np.array_equal(tile, features["chelsea.jpg"][10:20, 2:5, 3:9])
    assert features.image_attrs("chelsea.jpg")["source_size"] == [300, 451]
    assert features.attrs["backbone"] == "effnet-lite0" and features.attrs["out_dtype"] == "float32"
    with pytest.raises(KeyError):
        features["nope.jpg"]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataset_in_two_workers(extract_file, start_method):
    loader = DataLoader(FeatureDataset(extract_file), batch_size=None, num_workers=2,
                        multiprocessing_context=start_method)
    seen = {item["name"]: item["features"] for item in loader}
    assert sorted(seen) == NAMES
    reference = FeatureFile(extract_file)
    for name, tensor in seen.items():
        assert tensor.dtype == torch.float32 and np.array_equal(tensor.numpy(), reference[name])


def test_upsampling_on_read_equals_the_upsample_command(extract_file, tmp_path):
    out = tmp_path / "up.h5"
    result = subprocess.run([*NAF, "upsample", str(extract_file), "--upsampler", "bilinear", "--scale", "4", "-o", str(out),
                             "--out-dtype", "float32"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    dataset = UpsamplingDataset(extract_file, upsampler="bilinear", output_size=OutputSize("grid", 4))
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    written = FeatureFile(out)
    assert written.attrs["backbone"] == "effnet-lite0" and written.attrs["features_from"] == str(extract_file)
    count = 0
    for item in loader:
        assert np.array_equal(item["features"].numpy(), written[item["name"]])
        count += 1
    assert count == 4


def test_a_file_from_another_tool_is_upsampled(tmp_path, examples_dir):
    """Only /features/<name> [C, h, w] and a source_path attribute: the minimum docs/format.md asks."""
    low = torch.randn(16, 5, 7)
    with h5py.File(tmp_path / "theirs.h5", "w") as f:
        f.create_dataset("features/cat.jpg", data=low.numpy()).attrs["source_path"] = str(examples_dir / "chelsea.jpg")
    out = tmp_path / "ours.h5"
    result = subprocess.run([*NAF, "upsample", str(tmp_path / "theirs.h5"), "--upsampler", "bilinear", "--scale", "3",
                             "-o", str(out), "--out-dtype", "float32"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    expected = F.interpolate(low[None], size=(15, 21), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(torch.from_numpy(FeatureFile(out)["cat.jpg"]), expected)


def test_newer_format_versions_are_refused(tmp_path):
    with h5py.File(tmp_path / "future.h5", "w") as f:
        f.attrs["format_version"] = 99
        f.create_dataset("features/x.jpg", data=np.zeros((4, 2, 2)))
    with pytest.raises(NafError, match="format version 99, newer"):
        FeatureFile(tmp_path / "future.h5")


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_keeps_values(extract_file, tmp_path, examples_dir, compression):
    out = tmp_path / f"{compression}.h5"
    result = subprocess.run([*NAF, "extract", str(examples_dir), "-o", str(out), "--out-dtype", "float32",
                             "--compression", compression], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    compressed, plain = FeatureFile(out), FeatureFile(extract_file)
    for name in NAMES:
        assert compressed.dataset(name).compression == compression
        assert np.array_equal(compressed[name], plain[name])
