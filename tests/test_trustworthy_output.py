"""Outputs never claim data they do not hold: two runs on one -o, a forgotten run.json, a shard
copied in from another run, a missing shard opened beside a decoy run, a flipped byte; and what
`naf info` and `naf verify` say of each. Real subprocesses, real files (issue: trustworthy output)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from cli_runs import NAF, naf, six_photos
from feature_files import contents, dataset_names

RUN = ["extract", "--shard-images", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, examples_dir) -> Path:
    return six_photos(tmp_path_factory.mktemp("photos"), examples_dir)


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "o.h5"
    result = naf(*RUN, str(photos), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def copy_output(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    shutil.copytree(source.with_name(source.name + ".shards"), target.with_name(target.name + ".shards"))
    return target


def info(path: Path, cwd: Path | None = None) -> tuple[int, dict]:
    result = subprocess.run([*NAF, "info", str(path), "--json"], capture_output=True, text=True, timeout=120, cwd=cwd)
    return result.returncode, json.loads(result.stdout) if result.stdout else {"stderr": result.stderr}


def problems(summary: dict) -> list[str]:
    return [p["problem"] for p in summary["problems"]]


def test_a_second_run_on_a_held_output_is_refused_before_any_work(photos, reference, tmp_path):
    out = tmp_path / "o.h5"
    first = subprocess.Popen([*NAF, *RUN, str(photos), "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stderr is not None
    for line in first.stderr:
        if line.startswith("[1/6]"):
            break
    first.send_signal(signal.SIGSTOP)  # a stopped run still holds its output
    try:
        for other in ([], ["--long-side", "224"], ["--overwrite"], ["--shard", "1/2"]):
            second = naf(*RUN, str(photos), "-o", str(out), *other)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, second.stderr
            assert f"pid {first.pid}" in lines[0] and "another naf run" in lines[0] and "another -o" in lines[0]
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert contents(out) == contents(reference)
    assert info(out)[1]["complete"] is True
    assert not out.with_name("o.h5.lock").exists()


@pytest.mark.parametrize("options", [[], ["--long-side", "224"]], ids=["same-options", "other-options"])
def test_two_runs_started_together_never_mix(photos, reference, tmp_path, options):
    out = tmp_path / "o.h5"
    runs = [subprocess.Popen([*NAF, *RUN, str(photos), "-o", str(out), *extra], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for extra in ([], options)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    # one is refused, or (on a slow start) the second found the first finished: it resumed or was refused for its options
    assert codes in ([0, 2], [0, 0]), results
    refusals = [stderr for code, _, stderr in results if code == 2]
    assert all("another naf run" in s or "was written with long_side" in s for s in refusals), refusals
    with h5py.File(out, "r") as f:
        long_side = int(f.attrs["long_side"])
    if long_side == 448:
        assert contents(out) == contents(reference)
    # every image of the settings the file names: each grid's long side x 16 is that long side
    assert {max(d["shape"][1:]) * 16 for d in info(out)[1]["datasets"]} == {long_side}
    code, summary = info(out)
    assert code == 0 and summary["complete"] is True


def test_a_forgotten_run_json_is_rebuilt_from_the_shards(photos, reference, tmp_path):
    out = copy_output(reference, tmp_path / "o.h5")
    run_id = json.loads(out.with_name("o.h5.shards").joinpath("run.json").read_text())["run_id"]
    out.unlink()
    out.with_name("o.h5.shards").joinpath("run.json").unlink()
    other = naf(*RUN, str(photos), "-o", str(out), "--long-side", "224")
    assert other.returncode == 2 and "long_side=448" in other.stderr and "long_side=224" in other.stderr, other.stderr
    assert json.loads(out.with_name("o.h5.shards").joinpath("run.json").read_text())["run_id"] == run_id
    same = naf(*RUN, str(photos), "-o", str(out))
    assert same.returncode == 0 and "6 done by an earlier run" in same.stdout, same.stderr
    assert contents(out) == contents(reference)


def test_a_shard_copied_in_from_another_run_is_never_linked(photos, reference, tmp_path):
    other = tmp_path / "other" / "o.h5"
    other.parent.mkdir()
    assert naf(*RUN, str(photos), "-o", str(other), "--long-side", "224").returncode == 0
    out = copy_output(reference, tmp_path / "mine" / "o.h5")
    shards = out.with_name("o.h5.shards")
    removed = sorted(shards.glob("shard-*.h5"))[0]
    with h5py.File(removed, "r") as f:
        redone = dataset_names(f["features"])
    removed.unlink()
    stranger = sorted(other.with_name("o.h5.shards").glob("shard-*.h5"))[0]
    shutil.copy(stranger, shards / stranger.name)
    rerun = naf(*RUN, str(photos), "-o", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{shards / stranger.name} belongs to another run's" in rerun.stderr and "not linked" in rerun.stderr
    assert f"wrote {len(redone)} image(s)" in rerun.stdout
    assert contents(out) == contents(reference)
    assert info(out)[1]["complete"] is True


def test_a_missing_shard_never_reads_a_decoy_run_in_the_working_folder(photos, reference, tmp_path):
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    assert naf(*RUN, str(photos), "-o", str(decoy / "o.h5"), "--long-side", "224").returncode == 0
    out = copy_output(reference, tmp_path / "Y" / "o.h5")
    missing = sorted(out.with_name("o.h5.shards").glob("shard-*.h5"))[0]
    with h5py.File(missing, "r") as f:
        (name,) = dataset_names(f["features"])
    missing.unlink()
    # plain h5py from the decoy's folder: the image does not open (never the decoy's array)
    code = ("import h5py, sys\nf = h5py.File(sys.argv[1], 'r')\ntry:\n    print(f['features'][sys.argv[2]].shape)\n"
            "except KeyError:\n    print('unreadable')")
    read = subprocess.run([sys.executable, "-c", code, str(out), name], capture_output=True, text=True, cwd=decoy, timeout=120)
    assert read.stdout.strip() == "unreadable", read.stdout + read.stderr
    status, summary = info(out, cwd=decoy)
    assert status == 1 and summary["complete"] is False and problems(summary) == ["missing-shard"]
    assert summary["problems"][0]["first_images"] == [name] and "rerun" in summary["problems"][0]["fix"]
    reader = subprocess.run([sys.executable, "-c", "import sys, naf_cli; naf_cli.FeatureFile(sys.argv[1])[sys.argv[2]]",
                             str(out), name], capture_output=True, text=True, cwd=decoy, timeout=120)
    assert reader.returncode != 0 and f"image {name} of {out} cannot be read" in reader.stderr
    resumed = naf(*RUN, str(photos), "-o", str(out))
    assert resumed.returncode == 0 and "wrote 1 image(s)" in resumed.stdout, resumed.stderr
    assert contents(out) == contents(reference)


def test_a_flipped_byte_is_found_by_verify_and_redone_by_the_rerun(photos, reference, tmp_path):
    out = copy_output(reference, tmp_path / "o.h5")
    with h5py.File(out, "r") as f:
        name = "coffee.jpg"
        shard = out.parent / f["features"].get(name, getlink=True).filename
        chunk = f["features"][name].id.get_chunk_info(0)
    with open(shard, "r+b") as handle:
        handle.seek(chunk.byte_offset + chunk.size // 2)
        byte = handle.read(1)
        handle.seek(chunk.byte_offset + chunk.size // 2)
        handle.write(bytes([byte[0] ^ 0x10]))
    reader = subprocess.run([sys.executable, "-c", "import sys, naf_cli; naf_cli.FeatureFile(sys.argv[1])[sys.argv[2]]",
                             str(out), name], capture_output=True, text=True, timeout=120)
    assert reader.returncode != 0 and f"image {name} of {out} is damaged" in reader.stderr
    checked = naf("verify", str(out))
    assert checked.returncode == 1 and f"damaged: {name} in {shard}" in checked.stdout and "1 damaged" in checked.stdout
    assert json.loads(out.with_name("o.h5.shards").joinpath("damaged.json").read_text())[0]["image"] == name
    status, summary = info(out)
    assert status == 1 and problems(summary) == ["damaged"] and summary["problems"][0]["first_images"] == [name]
    rerun = naf(*RUN, str(photos), "-o", str(out))
    assert rerun.returncode == 0 and "wrote 1 image(s)" in rerun.stdout, rerun.stderr
    assert naf("verify", str(out)).returncode == 0
    assert contents(out) == contents(reference)
    assert info(out) == (0, info(out)[1]) and info(out)[1]["complete"] is True


def test_info_tells_the_truth(photos, reference, tmp_path):
    # an index copied without its shards folder
    alone = tmp_path / "alone" / "o.h5"
    alone.parent.mkdir()
    shutil.copy(reference, alone)
    status, summary = info(alone)
    assert status == 1 and summary["complete"] is False and problems(summary) == ["separated"]
    assert "o.h5.shards/ beside o.h5" in summary["problems"][0]["fix"] and summary["images"]["unreadable"] == 6
    text = subprocess.run([*NAF, "info", str(alone)], capture_output=True, text=True, timeout=120)
    assert text.returncode == 1 and "complete" in text.stdout and "separated" in text.stdout
    # a truncated index: one line, and rerunning the command rebuilds it
    out = copy_output(reference, tmp_path / "cut" / "o.h5")
    out.write_bytes(out.read_bytes()[:3000])
    cut = naf("info", str(out))
    assert cut.returncode == 1 and len(cut.stderr.strip().splitlines()) == 1 and "truncated" in cut.stderr
    assert "rerun" in cut.stderr and "unexpected" not in cut.stderr
    assert naf(*RUN, str(photos), "-o", str(out)).returncode == 0 and info(out)[1]["complete"] is True
    # an interrupted run
    killed = tmp_path / "killed.h5"
    assert naf(*RUN, str(photos), "-o", str(killed), env={"NAF_TEST_KILL_AT": "published:2"}).returncode == -signal.SIGKILL
    status, summary = info(killed)
    assert status == 1 and problems(summary) == ["incomplete"] and "4 image(s) pending" in summary["problems"][0]["message"]
    # HDF5 files naf did not write: without [C, h, w] features, refused; with them, read (complete unknown)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = [1, 2, 3]
    refused = naf("info", str(plain))
    assert refused.returncode == 2 and "not a naf feature file" in refused.stderr
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["features/a.png"] = [[[0.5] * 3] * 2] * 4
    status, summary = info(foreign)
    assert status == 0 and summary["complete"] is None and summary["images"]["done"] == 1


def test_a_damaged_image_is_redone_in_its_whole_batch(photos, tmp_path):
    """Batched convolutions may differ from single ones in the last bits: the redone image is
    computed in its batch group again (the others of the group computed, not written)."""
    batched = [*RUN, "--batch-size", "2"]
    base = tmp_path / "base.h5"
    assert naf(*batched, str(photos), "-o", str(base)).returncode == 0
    out = copy_output(base, tmp_path / "copy" / "base.h5")
    name = "coffee.jpg"
    with h5py.File(out, "r") as f:
        shard = out.parent / f["features"].get(name, getlink=True).filename
        chunk = f["features"][name].id.get_chunk_info(0)
    with open(shard, "r+b") as handle:
        handle.seek(chunk.byte_offset + 7)
        byte = handle.read(1)
        handle.seek(chunk.byte_offset + 7)
        handle.write(bytes([byte[0] ^ 0x01]))
    assert naf("verify", str(out)).returncode == 1
    rerun = naf(*batched, str(photos), "-o", str(out))
    assert rerun.returncode == 0 and "wrote 1 image(s)" in rerun.stdout, rerun.stderr
    assert contents(out) == contents(base)


def test_pca_names_an_image_it_cannot_read(reference, tmp_path):
    out = copy_output(reference, tmp_path / "o.h5")
    missing = sorted(out.with_name("o.h5.shards").glob("shard-*.h5"))[0]
    with h5py.File(missing, "r") as f:
        (name,) = dataset_names(f["features"])
    missing.unlink()
    result = naf("pca", str(out), "-o", str(tmp_path / "pca"))
    assert f"skipped {name}: it cannot be read" in result.stderr and "naf info" in result.stderr, result.stderr
    assert result.returncode == 3 and "wrote 5 PCA pictures" in result.stdout  # 3: an input was skipped
