"""The main job through the real CLI, on the real example photos, read back with plain h5py."""

import hashlib
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from naf_cli.backbones import load_backbone
from naf_cli.checkpoints import packaged_checkpoint
from naf_cli.cli.app import app
from naf_cli.images import load_image

runner = CliRunner()


def expected_sizes(path, patch=16, long_side=448, scale=16):
    """The documented rule, written out: long side 448, sides rounded to the patch size."""
    h, w = load_image(path).shape[-2:]
    factor = long_side / max(h, w)
    grid = [max(1, round(side * factor / patch)) for side in (h, w)]
    return tuple(g * patch for g in grid), tuple(grid), tuple(round(g * scale) for g in grid)


@pytest.fixture(scope="module")
def naf_file(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("run") / "f.h5"
    result = runner.invoke(app, ["upsample", str(examples_dir), "--vfm", "effnet-lite0", "--scale", "16", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 image(s)" in result.stdout
    return out


def test_main_job_writes_self_describing_hdf5(naf_file, examples_dir):
    shards = naf_file.with_name("f.h5.shards")
    assert not list(shards.glob("*.partial")) and list(shards.glob("shard-*.h5"))  # every shard published
    assert not naf_file.with_name("f.h5.lock").exists()  # the finished run gave its lock back
    with h5py.File(naf_file, "r") as f:
        assert f.attrs["backbone"] == "effnet-lite0"
        assert f.attrs["upsampler"] == "naf"
        digest = hashlib.sha256(packaged_checkpoint().read_bytes()).hexdigest()
        assert f.attrs["checkpoint_sha256"] == digest
        assert f.attrs["scale"] == 16.0
        names = sorted(f["features"].keys())
        assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
        for name in names:
            data = f["features"][name]
            in_size, grid, out_size = expected_sizes(examples_dir / name)
            assert data.dtype == np.float16
            assert data.shape == (112, *out_size)
            assert data.chunks is not None
            assert tuple(data.attrs["feature_size"]) == grid
            assert tuple(data.attrs["backbone_input_size"]) == in_size
            assert data.attrs["source_image"] == name
            values = data[()].astype(np.float32)
            assert np.isfinite(values).all() and values.std() > 0


def test_bilinear_matches_interpolated_backbone_features(tmp_path, examples_dir):
    out = tmp_path / "b.h5"
    result = runner.invoke(app, ["upsample", str(examples_dir / "coffee.jpg"), "--upsampler", "bilinear", "--scale", "4", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    image = load_image(examples_dir / "coffee.jpg")[None]
    in_size, grid, _ = expected_sizes(examples_dir / "coffee.jpg", scale=4)
    with torch.no_grad():
        small = F.interpolate(image, size=in_size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        features = load_backbone("effnet-lite0")(small)
        expected = F.interpolate(features, size=(grid[0] * 4, grid[1] * 4), mode="bilinear", align_corners=False)[0]
    with h5py.File(out, "r") as f:
        stored = torch.from_numpy(f["features"]["coffee.jpg"][()]).float()
    torch.testing.assert_close(stored, expected.half().float(), atol=1e-2, rtol=1e-3)


def test_rerun_resumes_and_foreign_outputs_are_not_overwritten(naf_file, examples_dir, tmp_path):
    shard = sorted(naf_file.with_name("f.h5.shards").glob("shard-*.h5"))[0]
    before = shard.read_bytes()
    result = runner.invoke(app, ["upsample", str(examples_dir), "-o", str(naf_file), "--device", "cpu"])
    assert result.exit_code == 0 and "wrote 0 image(s)" in result.stdout and "4 done by an earlier run" in result.stdout
    assert shard.read_bytes() == before
    foreign = tmp_path / "mine.h5"
    foreign.write_bytes(b"precious")
    result = runner.invoke(app, ["upsample", str(examples_dir), "-o", str(foreign)])
    assert result.exit_code == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert foreign.read_bytes() == b"precious"


def test_bad_image_is_named_skipped_and_recorded(tmp_path, examples_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(examples_dir / "rocket.jpg", folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    truncated = (examples_dir / "chelsea.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(truncated[: len(truncated) // 3])
    out = tmp_path / "o.h5"
    result = runner.invoke(app, ["upsample", str(folder), "--upsampler", "bilinear", "--scale", "2", "-o", str(out)])
    assert result.exit_code == 3
    assert "broken.jpg" in result.stderr and "truncated.jpg" in result.stderr
    assert "Traceback" not in result.output
    with h5py.File(out, "r") as f:
        assert list(f["features"].keys()) == ["good.jpg"]
        assert "broken.jpg" in f.attrs["skipped_images"]


def test_empty_folder_and_unknown_names_fail_clearly(tmp_path):
    result = runner.invoke(app, ["upsample", str(tmp_path), "-o", str(tmp_path / "o.h5")])
    assert result.exit_code == 2 and "no images found" in result.stderr
    result = runner.invoke(app, ["upsample", str(tmp_path), "--upsampler", "lanczos", "-o", str(tmp_path / "o.h5")])
    assert result.exit_code == 2 and "bicubic" in result.stderr and "naf" in result.stderr
    result = runner.invoke(app, ["upsample", str(tmp_path), "--vfm", "dinov9", "-o", str(tmp_path / "o.h5")])
    assert result.exit_code == 2 and "dinov2-b" in result.stderr
    assert not (tmp_path / "o.h5").exists()


def test_unusable_device_is_a_clear_error(tmp_path, examples_dir):
    import torch

    for device, words in (("tpu9", "unknown device"), ("cuda", "CUDA is not available")):
        if device == "cuda" and torch.cuda.is_available():
            continue
        result = runner.invoke(app, ["upsample", str(examples_dir), "-o", str(tmp_path / "o.h5"), "--device", device])
        assert result.exit_code == 2 and words in result.stderr, result.output


def test_version_help_and_env():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("naf-cli ")
    result = runner.invoke(app, ["--help"])
    for command in ("upsample", "train", "env", "models"):
        assert command in result.stdout
    result = runner.invoke(app, ["env", "--device", "cpu"])
    assert result.exit_code == 0
    assert "natten:" in result.stdout and "attention backend:" in result.stdout and "torch:" in result.stdout
    assert "encoder convolution: " in result.stdout and "openmp idle spin: " in result.stdout


def test_values_beyond_float16_range_are_kept_in_float32(tmp_path):
    from naf_cli.pipeline.feature_map import FeatureMap
    from naf_cli.pipeline.hdf5.sink import HDF5FeatureSink

    big = torch.tensor([[[1.0, 7e4], [-1e5, 3.0]]])
    out = HDF5FeatureSink(tmp_path / "o.h5")
    out.prepare({})
    out.begin({})
    out.write("big.png", FeatureMap.held(big), {})
    out.write("small.png", FeatureMap.held(big / 1000), {})
    out.finish()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["features/big.png"].dtype == np.float32
        assert np.array_equal(f["features/big.png"][()], big.numpy())
        assert f["features/small.png"].dtype == np.float16


def test_console_script_is_installed():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "naf"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("naf-cli ")


def test_backbone_width_not_divisible_by_heads_fails_before_any_output(tmp_path, examples_dir):
    import timm

    from naf_cli.backbones import Backbone, BackboneInfo
    from naf_cli.checkpoints import load_naf
    from naf_cli.errors import ShapeError
    from naf_cli.pipeline import upsample_folder
    from naf_cli.upsamplers import UpsamplerInfo

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=198, num_heads=3, depth=1, dynamic_img_size=True)
    info = BackboneInfo("odd-vit", "vit_tiny_patch16_224", 16, (0.5,) * 3, (0.5,) * 3, 198, "test")
    out = tmp_path / "o.h5"
    with pytest.raises(ShapeError, match="198 channels"):
        upsample_folder(examples_dir, out, Backbone(info, vit, final_norm=True), load_naf(), UpsamplerInfo("naf"), 16)
    assert list(tmp_path.iterdir()) == []  # no index, shard folder or lock file
