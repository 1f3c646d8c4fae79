"""Outputs too large for the memory budget: NAF computes them band by band while the HDF5
sink writes them, with the same bytes as the whole-output path."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import torch

from naf_cli.checkpoints import load_naf, packaged_checkpoint
from naf_cli.images import read_image
from naf_cli.modeling import NAF
from naf_cli.pipeline.feature_map import FeatureMap
from naf_cli.pipeline.hdf5.sink import HDF5FeatureSink
from naf_cli.pipeline.sizes import OutputSize
from naf_cli.pipeline.transforms import UpsampleFeatures

CLI = [sys.executable, "-m", "naf_cli"]
SIZE = (600, 600)
PHOTO = (300, 451)  # chelsea.jpg, the guidance when the output is larger


def _limit_between_banded_and_whole(channels: int = 112) -> int:
    model = NAF()
    banded = model.banded_peak_bytes(channels, SIZE, 1, PHOTO)
    whole = model.peak_bytes(channels, SIZE, 1, PHOTO)
    assert banded < whole
    return (banded + whole) // 2


def test_the_transform_hands_back_bands_only_when_the_whole_output_does_not_fit(examples_dir):
    model = load_naf(packaged_checkpoint()).eval()
    photo = read_image(examples_dir / "chelsea.jpg")[0].rgb()[None]
    low = torch.randn(1, 112, 19, 28)
    whole, _ = UpsampleFeatures(model, None, OutputSize("fixed", fixed=SIZE))(photo, low)
    limited = UpsampleFeatures(model, None, OutputSize("fixed", fixed=SIZE), memory_limit=_limit_between_banded_and_whole())
    banded, size = limited(photo, low)
    assert len(whole) == len(banded) == 1 and not whole[0].is_banded and banded[0].is_banded
    assert size == SIZE and banded[0].shape == whole[0].shape == (112, *SIZE)
    rows = list(banded[0].bands())
    assert len(rows) > 1 and rows[0][0] == 0 and rows[-1][1] == SIZE[0]
    assert [(r0, r1) for r0, r1, _ in whole[0].bands()] == [(0, SIZE[0])]  # a held map is one band
    torch.testing.assert_close(banded[0].tensor(), whole[0].tensor(), atol=1e-5, rtol=1e-5)


def test_the_upsampling_dataset_gives_the_same_features_on_the_banded_path(tmp_path, examples_dir):
    """A memory limit that forces bands changes how items are computed, not what they hold."""
    from naf_cli.datasets import UpsamplingDataset

    extract = tmp_path / "lr.h5"
    low = torch.randn(112, 19, 28)
    with h5py.File(extract, "w") as f:
        f.create_dataset("features/chelsea.jpg", data=low.numpy()).attrs["source_path"] = str(examples_dir / "chelsea.jpg")
    rule = OutputSize("fixed", fixed=SIZE)
    checkpoint = packaged_checkpoint()
    whole = UpsamplingDataset(extract, "naf", checkpoint, rule)[0]
    banded_set = UpsamplingDataset(extract, "naf", checkpoint, rule, memory_limit=_limit_between_banded_and_whole())
    banded = banded_set[0]
    assert banded_set._upsample().check_memory(112, SIZE, torch.device("cpu"), 1, PHOTO) is False  # really the banded path
    assert banded["output_size"] == whole["output_size"] == SIZE and banded["features"].shape == (112, *SIZE)
    torch.testing.assert_close(banded["features"], whole["features"], atol=1e-5, rtol=1e-5)


def test_banded_values_beyond_float16_are_kept_in_float32(tmp_path):
    big = torch.zeros(2, 6, 5)
    big[1, 4, 2] = 7e4

    def bands():
        for r0 in range(0, 6, 2):
            yield r0, r0 + 2, big[:, r0:r0 + 2]

    out = HDF5FeatureSink(tmp_path / "o.h5")
    out.prepare({})
    out.begin({})
    out.write("big.png", FeatureMap.banded((2, 6, 5), bands), {"k": 1})
    out.write("small.png", FeatureMap.banded((2, 6, 5), lambda: ((r0, r1, rows / 1e3) for r0, r1, rows in bands())), {})
    out.finish()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["features/big.png"].dtype == np.float32 and np.array_equal(f["features/big.png"][()], big.numpy())
        assert f["features/big.png"].attrs["k"] == 1
        assert f["features/small.png"].dtype == np.float16


def test_cli_writes_in_bands_under_max_memory_with_the_same_bytes(tmp_path, examples_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(examples_dir / "chelsea.jpg", photos / "chelsea.jpg")
    common = ["upsample", str(photos), "--vfm", "effnet-lite0", "--output-size", "600x600", "--device", "cpu"]
    whole = subprocess.run([*CLI, *common, "-o", str(tmp_path / "whole.h5")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    limit = str(_limit_between_banded_and_whole())
    banded = subprocess.run([*CLI, *common, "--max-memory", limit, "-o", str(tmp_path / "banded.h5")],
                            capture_output=True, text=True, timeout=600)
    assert banded.returncode == 0, banded.stderr
    with h5py.File(tmp_path / "whole.h5", "r") as a, h5py.File(tmp_path / "banded.h5", "r") as b:
        x, y = a["features/chelsea.jpg"], b["features/chelsea.jpg"]
        assert x.shape == y.shape == (112, *SIZE) and x.dtype == y.dtype == np.float16
        assert np.array_equal(x[()], y[()])
        assert dict(x.attrs).keys() == dict(y.attrs).keys()
    tiny = subprocess.run([*CLI, *common, "--max-memory", "50M", "-o", str(tmp_path / "tiny.h5")],
                          capture_output=True, text=True, timeout=600)
    assert tiny.returncode == 2 and "more than the 0.0 GiB available" in tiny.stderr
    bad = subprocess.run([*CLI, *common, "--max-memory", "lots", "-o", str(tmp_path / "bad.h5")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--max-memory must be a size such as 512M or 4G" in bad.stderr


def test_the_run_loop_waits_for_a_banded_output_before_the_next_batch(examples_dir, tmp_path):
    """A banded output is computed on the writer thread while it is written; the next batch
    must not run beside it (it was banded because memory is short)."""
    import threading
    import time

    from naf_cli.pipeline import ImageSource, run_pipeline
    from naf_cli.pipeline.progress import SilentProgress
    from naf_cli.pipeline.seams import Result

    events: list[tuple[str, str, float]] = []

    class BandedEveryTime:
        """The transform contract, each image's output handed back as slow bands."""

        kind = "extract"
        device = torch.device("cpu")

        def file_attrs(self):
            return {}

        def file_arrays(self):
            return {}

        def bucket_key(self, image, name):
            return name

        def run_batch(self, images, names):
            events.append(("batch", names[0], time.perf_counter()))

            def bands(name=names[0]):
                for r0 in range(0, 4, 2):
                    time.sleep(0.1)
                    yield r0, r0 + 2, torch.full((3, 2, 5), float(r0))
                events.append(("banded", name, time.perf_counter()))
                assert threading.current_thread().name == "naf-writer"

            return [Result(FeatureMap.banded((3, 4, 5), bands))]

    source = ImageSource([examples_dir], [], None)
    summary = run_pipeline(source, BandedEveryTime(), HDF5FeatureSink(tmp_path / "b.h5"), SilentProgress(), workers=0)
    assert summary.done == 4
    order = [(kind, name) for kind, name, _ in sorted(events, key=lambda e: e[2])]
    names = sorted(p.name for p in examples_dir.glob("*.jpg"))
    assert order == [(kind, name) for name in names for kind in ("batch", "banded")]
