"""`naf extract` then `naf info` on the example photos, through the real CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess

import h5py
import numpy as np
import pytest
import torch
from cli_runs import NAF

from naf_cli.backbones import load_backbone
from naf_cli.images import load_image
from naf_cli.pipeline.sizes import backbone_input_size
from naf_cli.pipeline.transforms import resize


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("extract") / "lr.h5"
    result = subprocess.run([*NAF, "extract", str(examples_dir), "--vfm", "effnet-lite0", "-o", str(out), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def test_extract_stores_backbone_features_with_provenance(extracted, examples_dir):
    backbone = load_backbone("effnet-lite0")
    with h5py.File(extracted, "r") as f:
        assert f.attrs["kind"] == "extract" and f.attrs["backbone"] == "effnet-lite0"
        assert f.attrs["command"].startswith("naf extract ")
        assert sorted(f["features"]) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
        for name in f["features"]:
            data = f["features"][name]
            path = examples_dir / name
            assert data.attrs["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert data.attrs["source_path"] == str(path.absolute())
            image = load_image(path)
            assert tuple(data.attrs["source_size"]) == tuple(image.shape[-2:])
            size = backbone_input_size(tuple(image.shape[-2:]), 16, 448)
            with torch.no_grad():
                expected = backbone(resize(image, size))[0]
            assert data.shape == tuple(expected.shape) and data.dtype == np.float16
            torch.testing.assert_close(torch.from_numpy(data[()]).float(), expected.half().float(), atol=2e-2, rtol=1e-3)


def test_info_summarises_the_file(extracted):
    result = subprocess.run([*NAF, "info", str(extracted), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["complete"] is True
    assert summary["images"] == {"done": 4, "unreadable": 0, "skipped": 0, "pending": 0, "total": 4}
    assert summary["problems"] == [] and all(d["checksums"] for d in summary["datasets"])
    assert summary["backbone"]["backbone"] == "effnet-lite0" and summary["backbone"]["channels"] == 112
    assert summary["run"]["kind"] == "extract" and summary["run"]["command"].startswith("naf extract")
    assert summary["shapes"]["channels"] == [112] and summary["shapes"]["dtypes"] == ["float16"]
    shards = extracted.with_name("lr.h5.shards")
    # the index and the shards it links to
    assert summary["size_on_disk_bytes"] == extracted.stat().st_size + sum(p.stat().st_size for p in shards.glob("shard-*.h5"))
    assert {d["name"] for d in summary["datasets"]} == {"astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"}
    text = subprocess.run([*NAF, "info", str(extracted)], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0
    for words in ("effnet-lite0", "images done", "4", "float16", "naf extract"):
        assert words in text.stdout
    assert summary["backbone"]["backbone_weights_sha256"] in text.stdout  # piped: whole, never cut or wrapped


def test_info_names_skipped_inputs_and_refuses_non_hdf5(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes((examples_dir / "coffee.jpg").read_bytes())
    (folder / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "o.h5"
    assert subprocess.run([*NAF, "extract", str(folder), "-o", str(out)], capture_output=True, timeout=600).returncode == 3
    summary = json.loads(subprocess.run([*NAF, "info", str(out), "--json"], capture_output=True, text=True, timeout=120).stdout)
    assert summary["images"] == {"done": 1, "unreadable": 0, "skipped": 1, "pending": 0, "total": 2}
    assert summary["skipped"][0]["image"] == "bad.png" and "not an image format" in summary["skipped"][0]["reason"]
    result = subprocess.run([*NAF, "info", str(folder / "ok.jpg")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not an HDF5 file" in result.stderr


def test_upsampling_stored_features_equals_the_upsample_command(extracted, tmp_path, examples_dir):
    """The "upsampler alone" transform over an extract file's features gives what `naf upsample`
    writes: nearest copies float16 values, so the two files agree exactly."""
    from naf_cli.images import read_image
    from naf_cli.pipeline import OutputSize, UpsampleFeatures
    from naf_cli.upsamplers import load_upsampler

    out = tmp_path / "up.h5"
    result = subprocess.run([*NAF, "upsample", str(examples_dir), "--upsampler", "nearest", "--scale", "3", "-o", str(out),
                             "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    nearest, info = load_upsampler("nearest")
    transform = UpsampleFeatures(nearest, info, OutputSize("grid", 3))
    with h5py.File(extracted, "r") as low, h5py.File(out, "r") as high:
        for name in low["features"]:
            image, _ = read_image(examples_dir / name)
            features = torch.from_numpy(low["features"][name][()]).float()[None]
            upsampled, size = transform(image.rgb()[None], features)
            assert tuple(high["features"][name].attrs["output_size"]) == size
            assert np.array_equal(upsampled[0].tensor().half().numpy(), high["features"][name][()])


def test_python_api_shows_tqdm_progress(tmp_path, examples_dir, capfd):
    from naf_cli import extract_folder, load_backbone

    summary = extract_folder(examples_dir, tmp_path / "api.h5", load_backbone("effnet-lite0"))
    assert summary.done == 4 and not summary.skipped
    err = capfd.readouterr().err
    assert "4/4" in err and "img" in err  # tqdm's bar: count and unit


def test_a_file_named_with_a_leading_dash(tmp_path, examples_dir):
    (tmp_path / "-dash.jpg").write_bytes((examples_dir / "coffee.jpg").read_bytes())
    result = subprocess.run([*NAF, "extract", "-o", "d.h5", "--", "-dash.jpg"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert list(f["features"]) == ["-dash.jpg"]
