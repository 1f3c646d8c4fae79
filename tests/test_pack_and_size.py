"""Features at scale: chunks that fit the data, the size of a run said (or refused) before its
first image, and naf pack's one self-contained file. Real runs on the example photos."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_runs import naf

from naf_cli.features import FeatureFile

MAIN_JOB = ["upsample", "--vfm", "effnet-lite0", "--scale", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def main_job(examples_dir, tmp_path_factory) -> tuple[Path, str]:
    """The README's main job on the four example photos, a shard per image."""
    out = tmp_path_factory.mktemp("main") / "feats.h5"
    result = naf(*MAIN_JOB, str(examples_dir), "-o", str(out), "--shard-images", "1")
    assert result.returncode == 0, result.stderr
    return out, result.stderr


def _info(path: Path) -> dict:
    return json.loads(naf("info", str(path), "--json").stdout)


def test_stored_bytes_are_within_5_percent_of_the_data_on_the_example_photos(main_job):
    shapes = _info(main_job[0])["shapes"]
    assert shapes["feature_bytes_data"] == sum(112 * h * w * 2 for h, w in ((448, 448), (304, 448), (304, 448), (304, 448)))
    assert shapes["feature_bytes_stored"] <= 1.05 * shapes["feature_bytes_data"]
    assert "stored / data" in naf("info", str(main_job[0])).stdout


def test_the_size_line_comes_before_the_first_image_and_is_right(main_job):
    out, stderr = main_job
    lines = stderr.splitlines()
    size = next(i for i, line in enumerate(lines) if line.startswith("size: "))
    started = next(i for i, line in enumerate(lines) if "input(s)" in line)
    assert size < started, stderr
    match = re.search(r"about ([\d.]+) MiB for 4 image\(s\) to write; .* free on the disk of ", lines[size])
    assert match, lines[size]
    stored = _info(out)["shapes"]["feature_bytes_stored"]
    assert float(match[1]) == pytest.approx(stored / 2**20, rel=0.01)


def test_a_run_that_cannot_fit_on_its_disk_is_refused_before_any_work(examples_dir, tmp_path):
    """2,000 inputs (links to one photo) of 112 x 4096 x 4096 float32 each: about 15 TB."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2000):
        (folder / f"img{i:05d}.jpg").symlink_to(examples_dir / "chelsea.jpg")
    out = tmp_path / "big.h5"
    result = naf("upsample", "--vfm", "effnet-lite0", "--upsampler", "bilinear", "--output-size", "4096x4096",
                 "--out-dtype", "float32", "--device", "cpu", str(folder), "-o", str(out))
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "the run would write about" in errors[0] and "2000 image(s)" in errors[0]
    for fix in ("--pca 32", "--out-dtype float16", "a smaller --scale or --output-size", "naf extract", "-o on a larger disk"):
        assert fix in errors[0], errors[0]
    assert not out.exists() and not (tmp_path / "big.h5.shards").exists()


def test_a_pca_run_too_big_for_its_disk_is_refused_before_its_fit(examples_dir, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2000):
        (folder / f"img{i:05d}.jpg").symlink_to(examples_dir / "chelsea.jpg")
    result = naf("upsample", "--vfm", "effnet-lite0", "--upsampler", "bilinear", "--output-size", "4096x4096", "--pca", "100",
                 "--device", "cpu", str(folder), "-o", str(tmp_path / "big.h5"))
    assert result.returncode == 2 and "the run would write about" in result.stderr, result.stderr
    assert "fitting" not in result.stderr and "fewer --pca components" in result.stderr


def test_a_shard_part_says_the_size_of_its_own_share(examples_dir, tmp_path):
    """Part 1 of 2 after part 0 finished into the same output: its two photos, not all four."""
    out = tmp_path / "parts.h5"
    first = naf(*MAIN_JOB, "--scale", "2", str(examples_dir), "--shard", "0/2", "-o", str(out))
    assert first.returncode == 0 and "for 2 image(s) to write" in first.stderr, first.stderr
    second = naf(*MAIN_JOB, "--scale", "2", str(examples_dir), "--shard", "1/2", "-o", str(out))
    assert second.returncode == 0 and "part 1/2: size: about" in second.stderr, second.stderr
    assert "for 2 image(s) to write" in second.stderr
    again = naf(*MAIN_JOB, "--scale", "2", str(examples_dir), "--shard", "1/2", "-o", str(out))
    assert again.returncode == 0 and "size: about" not in again.stderr  # nothing left to write


def test_pack_keeps_nested_names_and_unwritten_chunks(tmp_path):
    from naf_cli.pipeline.hdf5.pack import pack
    from naf_cli.pipeline.progress import SilentProgress

    source = tmp_path / "other.h5"
    with h5py.File(source, "w") as f:
        nested = f.create_dataset("features/holiday/beach.jpg", shape=(4, 50, 60), dtype=np.float32, chunks=(4, 20, 20),
                                  compression="gzip", shuffle=True, fletcher32=True, fillvalue=-1.0)
        nested[:, :20, :20] = 7.0  # one chunk of nine written: the rest read as the fill value
        nested.attrs["source_path"] = "/photos/holiday/beach.jpg"
    result = pack(source, tmp_path / "one.h5", SilentProgress())
    assert result.images == 1
    with h5py.File(source, "r") as a, h5py.File(tmp_path / "one.h5", "r") as b:
        original, copy = a["features/holiday/beach.jpg"], b["features/holiday/beach.jpg"]
        assert np.array_equal(original[()], copy[()]) and copy[0, 40, 40] == -1.0
        assert (copy.compression, copy.shuffle, copy.fletcher32, copy.chunks) == ("gzip", True, True, (4, 20, 20))
        assert copy.id.get_num_chunks() == 1 and copy.attrs["source_path"] == "/photos/holiday/beach.jpg"


def _visited(path: Path) -> dict[str, h5py.Dataset]:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, node: found.__setitem__(name, (node.shape, node.dtype)) if isinstance(node, h5py.Dataset) else None)
    return found


def test_pack_gives_one_file_whose_every_dataset_equals_the_index(main_job, tmp_path):
    index = main_job[0]
    assert not any(name.startswith("features/") for name in _visited(index))  # links: visititems sees nothing
    packed = tmp_path / "handed-on" / "one.h5"
    packed.parent.mkdir()
    result = naf("pack", str(index), "-o", str(packed))
    assert result.returncode == 0, result.stderr
    assert "packed 4 image(s)" in result.stdout and "verified" in result.stdout
    visited = _visited(packed)
    assert sorted(visited) == sorted(f"features/{name}" for name in FeatureFile(index))
    assert all(len(shape) == 3 for shape, _ in visited.values())
    with h5py.File(packed, "r") as one, FeatureFile(index) as run:
        for name in run:
            data = one["features"][name]
            assert np.array_equal(data[()], run[name]) and data.fletcher32
            assert data.attrs["source_sha256"] == run.image_attrs(name)["source_sha256"]
        for key in ("run_id", "settings_sha256", "command", "backbone", "checkpoint_sha256", "complete"):
            assert one.attrs[key] == run.attrs[key] or (key == "complete" and bool(one.attrs[key]))
        assert "shard_folder" not in one.attrs and one.attrs["packed_from"] == str(index.absolute())
        assert not any(isinstance(one["features"].get(name, getlink=True), h5py.ExternalLink) for name in one["features"])
    # it stands alone: no shards folder beside it, complete for naf info and naf verify
    assert naf("info", str(packed)).returncode == 0 and naf("verify", str(packed)).returncode == 0
    assert naf("pack", str(index), "-o", str(packed)).returncode == 2  # exists: refused without --overwrite
    assert naf("pack", str(index), "-o", str(packed), "--overwrite").returncode == 0


def test_pack_refuses_an_incomplete_run_unless_told(examples_dir, tmp_path):
    out = tmp_path / "run.h5"
    assert naf(*MAIN_JOB, "--scale", "2", str(examples_dir), "-o", str(out), "--shard-images", "1").returncode == 0
    sorted((tmp_path / "run.h5.shards").glob("shard-*.h5"))[0].unlink()
    packed = tmp_path / "one.h5"
    refused = naf("pack", str(out), "-o", str(packed))
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(errors) == 1 and "--incomplete" in errors[0] and "missing-shard" in errors[0]
    assert not packed.exists()
    told = naf("pack", str(out), "-o", str(packed), "--incomplete")
    assert told.returncode == 0 and "packed 3 image(s)" in told.stdout, told.stderr
    assert naf("info", str(packed)).returncode == 1  # it still says what is missing


def test_pack_of_a_damaged_shard_fails_and_leaves_nothing(examples_dir, tmp_path):
    out = tmp_path / "run.h5"
    assert naf(*MAIN_JOB, "--scale", "2", str(examples_dir), "-o", str(out)).returncode == 0
    shard = next((tmp_path / "run.h5.shards").glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        offset = f["features/chelsea.jpg"].id.get_chunk_info(0).byte_offset
    with open(shard, "r+b") as handle:
        handle.seek(offset + 100)
        byte = handle.read(1)
        handle.seek(offset + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    packed = tmp_path / "one.h5"
    result = naf("pack", str(out), "-o", str(packed))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "chelsea.jpg" in errors[0] and "naf verify" in errors[0], result.stderr
    assert not packed.exists() and not list(tmp_path.glob("one.h5*"))
    # told to pack what can be read: the damaged image is left out, named, and the file says so
    told = naf("pack", str(out), "-o", str(packed), "--incomplete")
    assert told.returncode == 3 and "left out chelsea.jpg" in told.stderr and "packed 3 image(s)" in told.stdout, told.stderr
    assert sorted(FeatureFile(packed)) == ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]
    assert naf("info", str(packed)).returncode == 1


def test_pack_of_a_plain_h5py_file_says_what_it_is(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("features/a", data=np.ones((4, 5, 6), np.float32))
    result = naf("pack", str(plain), "-o", str(tmp_path / "one.h5"))
    assert result.returncode == 0 and "not written by naf-cli: packed as it is" in result.stdout, result.stderr
    folder = naf("pack", str(tmp_path), "-o", str(tmp_path / "two.h5"))
    assert folder.returncode == 2 and f"{tmp_path} is a folder" in folder.stderr


def test_pack_memory_stays_flat(tmp_path):
    """A 128 MiB dataset is packed a chunk at a time: Python's peak stays a few MiB."""
    from naf_cli.pipeline.hdf5.pack import pack
    from naf_cli.pipeline.progress import SilentProgress

    big = tmp_path / "big.h5"
    with h5py.File(big, "w") as f:  # a file another tool wrote with the same layout
        data = f.create_dataset("features/one", shape=(64, 1024, 1024), dtype=np.float16, chunks=(64, 90, 90), fletcher32=True)
        for r0 in range(0, 1024, 128):
            data[:, r0:r0 + 128] = np.random.default_rng(r0).standard_normal((64, 128, 1024)).astype(np.float16)
    tracemalloc.start()
    result = pack(big, tmp_path / "one.h5", SilentProgress())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.images == 1 and peak < 16 * 2**20, peak
    with h5py.File(big, "r") as a, h5py.File(tmp_path / "one.h5", "r") as b:
        assert np.array_equal(a["features/one"][:, :100], b["features/one"][:, :100])
