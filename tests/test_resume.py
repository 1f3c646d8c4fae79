"""Crash safety and resume through real subprocesses: kill -9 at seeded points, SIGTERM, a full
disk; every interrupted-then-resumed file must equal an uninterrupted run's (docs/format.md)."""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from cli_runs import NAF, naf, six_photos
from feature_files import contents, dataset_names
from PIL import Image


@pytest.fixture(scope="module")
def photos(tmp_path_factory, examples_dir) -> Path:
    return six_photos(tmp_path_factory.mktemp("photos"), examples_dir)


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.h5"
    result = naf("extract", str(photos), "-o", str(out), "--shard-images", "2")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("kill_at,published", [("published:2", 2), ("published:1", 1), ("writing:3", 2)])
def test_kill_9_keeps_finished_images_and_resume_equals_uninterrupted(photos, uninterrupted, tmp_path, kill_at, published):
    out = tmp_path / "f.h5"
    args = ("extract", str(photos), "-o", str(out), "--shard-images", "1")
    killed = naf(*args, env={"NAF_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # plain h5py opens the index: the finished images, each complete; the others absent
    expected = contents(uninterrupted)
    with h5py.File(out, "r") as f:
        assert not f.attrs["complete"]
        names = dataset_names(f["features"])
    assert len(names) == published and 0 < published < len(expected)
    partial = contents(out)
    assert all(partial[name] == expected[name] for name in names)
    # the same command resumes: finished images are not redone, the result equals the uninterrupted run
    resumed = naf(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{published} image(s) already done are not redone" in resumed.stderr
    assert f"wrote {len(expected) - published} image(s)" in resumed.stdout
    assert contents(out) == expected
    assert not list(out.with_name("f.h5.shards").glob("*.partial"))
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and f.attrs["images_done"] == len(expected)


def test_other_settings_are_refused_and_overwrite_starts_again(photos, uninterrupted, tmp_path):
    out = tmp_path / "f.h5"
    shutil.copy(uninterrupted, out)
    shutil.copytree(uninterrupted.with_name("base.h5.shards"), tmp_path / "f.h5.shards")
    again = naf("extract", str(photos), "-o", str(out))
    assert again.returncode == 0 and "6 done by an earlier run" in again.stdout
    refused = naf("extract", str(photos), "-o", str(out), "--long-side", "224")
    assert refused.returncode == 2
    assert "long_side=448" in refused.stderr and "long_side=224" in refused.stderr and "--overwrite" in refused.stderr
    fresh = naf("extract", str(photos), "-o", str(out), "--long-side", "224", "--overwrite")
    assert fresh.returncode == 0 and "wrote 6 image(s)" in fresh.stdout
    with h5py.File(out, "r") as f:
        assert f.attrs["long_side"] == 224


def test_a_copied_output_opens_from_anywhere(uninterrupted, tmp_path):
    target = tmp_path / "elsewhere" / "deeper"
    target.mkdir(parents=True)
    shutil.copy(uninterrupted, target / "base.h5")
    shutil.copytree(uninterrupted.with_name("base.h5.shards"), target / "base.h5.shards")
    code = "import sys; sys.path.insert(0, sys.argv[2]); from feature_files import contents; print(len(contents(sys.argv[1])))"
    result = subprocess.run([sys.executable, "-c", code, "elsewhere/deeper/base.h5", str(Path(__file__).parent)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "6", result.stderr
    assert contents(target / "base.h5") == contents(uninterrupted)


def test_sigterm_leaves_a_resumable_output(photos, tmp_path):
    out = tmp_path / "t.h5"
    args = ["upsample", str(photos), "-o", str(out), "--shard-images", "1", "--device", "cpu"]
    process = subprocess.Popen([*NAF, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("[2/6]"):  # two images finished
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130
    assert "error: interrupted" in rest and "rerun the same command to resume" in rest
    with h5py.File(out, "r") as f:
        done = dataset_names(f["features"])
        assert 2 <= len(done) < 6 and not f.attrs["complete"]
    info = naf("info", str(out), "--json")
    assert '"pending": ' + str(6 - len(done)) in info.stdout
    resumed = naf(*args)
    assert resumed.returncode == 0 and f"{len(done)} done by an earlier run" in resumed.stdout


def test_a_full_disk_is_one_clear_error_and_resumable(tmp_path, examples_dir):
    """RLIMIT_FSIZE makes writes past 20 MB fail (EFBIG) in the subprocess, like a full disk."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.open(examples_dir / "rocket.jpg").convert("RGB")
    photo.resize((700, 100)).save(folder / "a_wide.jpg")   # 448x64 output: 6.4 MB in float16
    photo.resize((700, 100)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b_wide.jpg")
    photo.resize((500, 500)).save(folder / "c_square.jpg")  # 448x448: 45 MB, more than the limit
    out = tmp_path / "d.h5"
    args = ("upsample", str(folder), "-o", str(out), "--upsampler", "bilinear", "--shard-images", "2", "--device", "cpu")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 2**20, 20 * 2**20))

    full = subprocess.run([*NAF, *args], capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert full.returncode == 1, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "c_square.jpg" in errors[0] and "free disk space" in errors[0], full.stderr
    with h5py.File(out, "r") as f:
        assert dataset_names(f["features"]) == ["a_wide.jpg", "b_wide.jpg"]
        assert f["features/a_wide.jpg"].shape == (112, 64, 448)
    resumed = naf(*args)
    assert resumed.returncode == 0 and "2 done by an earlier run" in resumed.stdout, resumed.stderr
    with h5py.File(out, "r") as f:
        assert dataset_names(f["features"]) == ["a_wide.jpg", "b_wide.jpg", "c_square.jpg"]


def test_batched_runs_resume_exactly(photos, tmp_path):
    """NAF is not bitwise batch-invariant on CPU, so batches come from fixed groups of the name
    order and a shard never holds part of one: killed-and-resumed equals uninterrupted."""
    args = ["upsample", str(photos), "--scale", "2", "--long-side", "224", "--batch-size", "4", "--shard-images", "1",
            "--device", "cpu"]
    base = naf(*args, "-o", str(tmp_path / "b.h5"))
    assert base.returncode == 0, base.stderr
    killed = naf(*args, "-o", str(tmp_path / "k.h5"), env={"NAF_TEST_KILL_AT": "published:1"})
    assert killed.returncode == -signal.SIGKILL
    with h5py.File(tmp_path / "k.h5", "r") as f:
        assert len(dataset_names(f["features"])) == 4  # the first group of 4, whole
    resumed = naf(*args, "-o", str(tmp_path / "k.h5"))
    assert resumed.returncode == 0 and "4 done by an earlier run" in resumed.stdout, resumed.stderr
    assert contents(tmp_path / "k.h5") == contents(tmp_path / "b.h5")
    other = naf(*[("2" if arg == "4" else arg) for arg in args], "-o", str(tmp_path / "k.h5"))  # --batch-size 2
    assert other.returncode == 2 and "batch_size=4" in other.stderr


@pytest.mark.parametrize("too_large", ["budget", "cublas"])
def test_a_batch_that_does_not_fit_is_split(photos, tmp_path, too_large):
    from naf_cli.backbones import load_backbone
    from naf_cli.pipeline import ExtractFeatures, HDF5FeatureSink, ImageSource, run_pipeline
    from naf_cli.pipeline.progress import SilentProgress
    from naf_cli.pipeline.transforms import BatchTooLarge

    class TwoAtMost(ExtractFeatures):
        """The real backbone transform, with a memory budget of two images a batch."""

        def __init__(self, backbone):
            super().__init__(backbone, long_side=224)
            self.batches = []

        def bucket_key(self, image, name=""):
            return 0  # everything in one bucket, so the batch is the whole group

        def run_batch(self, images, names=()):
            if len(images) > 2 and too_large == "budget":
                raise BatchTooLarge(f"a batch of {len(images)}")
            if len(images) > 2:  # how cuBLAS says it: a RuntimeError, not OutOfMemoryError
                raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`\nmore")
            self.batches.append(list(names))
            return [self.features([image])[1][0] for image in images]

    transform = TwoAtMost(load_backbone("effnet-lite0"))
    warnings = []
    progress = SilentProgress()
    progress.warn = warnings.append
    summary = run_pipeline(ImageSource([photos]), transform, HDF5FeatureSink(tmp_path / "s.h5"), progress,
                           batch_size=6, workers=0)
    assert summary.done == 6
    assert [len(b) for b in transform.batches] == [1, 2, 1, 2]  # 6 -> 3 + 3 -> (1 + 2) + (1 + 2)
    assert sum("does not fit in memory" in w for w in warnings) == 1


def test_a_resume_with_nothing_to_do_says_so_and_keeps_the_start_time(tmp_path, examples_dir):
    out = tmp_path / "o.h5"
    assert naf("extract", str(examples_dir), "-o", str(out)).returncode == 0
    with h5py.File(out, "r") as f:
        created = f.attrs["created"]
    again = naf("extract", str(examples_dir), "-o", str(out))
    assert again.returncode == 0 and "0 of 4 (4 done by an earlier run)" in again.stderr, again.stderr
    assert "nothing left to compute" in again.stderr and "images/s" not in again.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["created"] == created
