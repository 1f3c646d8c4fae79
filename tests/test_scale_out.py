"""Runs split across processes (torchrun, --shard I/N, naf merge): whatever the split, the final
file meets the equality rule of docs/format.md against one process. Real torchrun, real
processes started at once, a rank killed with SIGKILL and resumed with another N."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from cli_runs import NAF, naf, six_photos
from feature_files import contents, dataset_names

# upsample with the real backbone and NAF, in batches of 2 (the last group is one batch of two
# same-size photos), a shard per image: parts and resumes must reproduce the batches exactly
RUN = ["upsample", "--long-side", "224", "--scale", "2", "--batch-size", "2", "--shard-images", "1", "--device", "cpu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """torchrun gives each process one thread (OMP_NUM_THREADS=1); kernels sum in another order
    with another thread count, so the equality rule compares runs with the same threads."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def photos(tmp_path_factory, examples_dir) -> Path:
    return six_photos(tmp_path_factory.mktemp("photos"), examples_dir)


@pytest.fixture(scope="module")
def single(photos, tmp_path_factory) -> Path:
    """The reference: one process."""
    out = tmp_path_factory.mktemp("single") / "one.h5"
    result = naf(*RUN, str(photos), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def root_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {key: (value.tolist() if hasattr(value, "tolist") else value) for key, value in f.attrs.items()}


def assert_complete_and_equal(out: Path, single: Path, parts: int) -> None:
    assert contents(out) == contents(single)
    attrs = root_attrs(out)
    assert attrs["complete"] and attrs["images_done"] == 6 and attrs["images_total"] == 6
    assert attrs["parts_total"] == parts and attrs["parts_finished"] == list(range(parts))
    shards = out.with_name(out.name + ".shards")
    if shards.is_dir():
        assert not list(shards.glob("*.partial"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", **(env or {})})


def test_parts_take_every_batch_group_once():
    from naf_cli.pipeline.partition import Partition

    for inputs in range(14):
        for batch in (1, 2, 3):
            for count in (1, 2, 3, 5):
                parts = [Partition(i, count) for i in range(count)]
                taken = [i for part in parts for start in part.group_starts(inputs, batch)
                         for i in range(start, min(start + batch, inputs))]
                assert sorted(taken) == list(range(inputs))
    assert Partition.parse(" 2/8 ") == Partition(2, 8) and Partition(2, 8).tag == "2of8"


def test_torchrun_two_processes_equal_one(photos, single, tmp_path):
    out = tmp_path / "t.h5"
    result = torchrun("--standalone", "--nproc-per-node", "2", "-m", "naf_cli", *RUN, str(photos), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "part 0/2: wrote 4 image(s)" in result.stdout and "part 1/2: wrote 2 image(s)" in result.stdout
    assert f"{out} is complete: all 2 parts finished" in result.stdout  # said by whichever rank finished last
    assert_complete_and_equal(out, single, parts=2)


def test_two_torchrun_agents_on_localhost_as_two_nodes(photos, single, tmp_path):
    out = tmp_path / "n.h5"
    port = str(free_port())
    agents = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                                "--master-addr", "127.0.0.1", "--master-port", port, "-m", "naf_cli", *RUN, str(photos),
                                "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
              for node in (0, 1)]
    results = [agent.communicate(timeout=600) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], results
    assert "part 1/2: wrote 2 image(s)" in results[1][0]
    assert_complete_and_equal(out, single, parts=2)


def test_three_shard_runs_at_once_merged_equal_one(photos, single, tmp_path):
    parts = [tmp_path / "parts" / f"p{i}.h5" for i in range(3)]
    parts[0].parent.mkdir()
    runs = [subprocess.Popen([*NAF, *RUN, str(photos), "--shard", f"{i}/3", "-o", str(part)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, part in enumerate(parts)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert not root_attrs(parts[1])["complete"]  # one part of three, alone in its file
    merged = tmp_path / "all" / "merged.h5"  # elsewhere: links are relative to the merged file
    merged.parent.mkdir()
    result = naf("merge", *map(str, reversed(parts)), "-o", str(merged))
    assert result.returncode == 0, result.stderr
    assert "6 image(s)" in result.stdout and "3 of 3 part(s) finished" in result.stdout
    assert_complete_and_equal(merged, single, parts=3)
    with h5py.File(merged, "r") as f:  # no feature data is copied: every dataset is a link into a part
        links = [f["features"].get(name, getlink=True) for name in f["features"]]
        assert all(isinstance(link, h5py.ExternalLink) and link.filename.startswith("../parts/") for link in links)
    assert merged.stat().st_size < 100_000
    info = json.loads(naf("info", str(merged), "--json").stdout)  # the merged index plus every part's shards
    shard_bytes = sum(p.stat().st_size for part in parts for p in part.with_name(part.name + ".shards").glob("shard-*.h5"))
    assert info["size_on_disk_bytes"] == merged.stat().st_size + shard_bytes and info["complete"]
    from naf_cli import FeatureFile

    assert len(FeatureFile(merged)) == 6  # the library reader follows the merged links too
    # idempotent: merging again, in another order, gives the same file
    again = naf("merge", *map(str, parts), "-o", str(merged))
    assert again.returncode == 0 and contents(merged) == contents(single)


def test_three_shard_runs_at_once_into_one_output(photos, single, tmp_path):
    """Parts sharing -o: no merge needed; the last to finish completes the index."""
    out = tmp_path / "shared.h5"
    runs = [subprocess.Popen([*NAF, *RUN, str(photos), "--shard", f"{i}/3", "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert sum("is complete: all 3 parts finished" in stdout for stdout, _ in outputs) >= 1
    assert_complete_and_equal(out, single, parts=3)
    shards = sorted(p.name for p in out.with_name("shared.h5.shards").glob("shard-*.h5"))
    assert {name.split("-")[2] for name in shards} == {"0of3", "1of3", "2of3"}
    assert len({name.split("-")[1] for name in shards}) == 1  # one run id: parts adopt the first part's


def test_a_killed_rank_resumes_with_another_n(photos, single, tmp_path):
    out = tmp_path / "k.h5"
    args = ["-m", "naf_cli", *RUN, str(photos), "-o", str(out)]
    killed = torchrun("--standalone", "--nproc-per-node", "2", *args, env={"NAF_TEST_KILL_AT": "published:1@1"})
    assert killed.returncode != 0
    assert "Signals.SIGKILL" in killed.stderr or "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    with h5py.File(out, "r") as f:  # what was published opens in plain h5py, each image complete
        done = dataset_names(f["features"])
        # rank 0 may publish all of its images before torchrun stops it (a loaded machine):
        # the output is then still incomplete, rank 1's part unfinished
        assert not f.attrs["complete"] and 1 <= len(done) <= 6
    expected = contents(single)
    assert all(contents(out)[name] == expected[name] for name in done)
    resumed = torchrun("--standalone", "--nproc-per-node", "3", *args)
    assert resumed.returncode == 0, resumed.stderr
    # the index may lag the shards (parts rewrite it at a limited rate), and resuming reads the shards
    found = re.search(r"(\d+) image\(s\) already done are not redone", resumed.stderr)
    assert found and len(done) <= int(found.group(1)) <= 6, resumed.stderr[-2000:]
    assert_complete_and_equal(out, single, parts=3)
    state = sorted(p.name for p in out.with_name("k.h5.shards").glob("part-*.json"))
    assert state == ["part-0of3.json", "part-1of3.json", "part-2of3.json"]  # the N=2 run's state is gone


def test_a_shard_resumed_alone_after_a_kill(photos, single, tmp_path):
    out = tmp_path / "s.h5"
    first = naf(*RUN, str(photos), "--shard", "0/2", "-o", str(out), env={"NAF_TEST_KILL_AT": "published:1"})
    assert first.returncode == -signal.SIGKILL
    other = naf(*RUN, str(photos), "--shard", "1/2", "-o", str(out))
    assert other.returncode == 0 and "waiting for 0/2" in other.stdout
    info = json.loads(naf("info", str(out), "--json").stdout)
    assert not info["complete"] and info["parts"]["pending"] == ["0/2"]
    again = naf(*RUN, str(photos), "--shard", "0/2", "-o", str(out))
    assert again.returncode == 0 and "is complete: all 2 parts finished" in again.stdout, again.stderr
    assert_complete_and_equal(out, single, parts=2)


def test_merge_says_what_is_pending_and_refuses_other_runs(photos, tmp_path):
    base = ["extract", str(photos), "--long-side", "224", "--device", "cpu"]
    assert naf(*base, "--shard", "0/2", "-o", str(tmp_path / "a.h5")).returncode == 0
    merged = tmp_path / "m.h5"
    early = naf("merge", str(tmp_path / "a.h5"), "-o", str(merged))
    assert early.returncode == 1 and "waiting for part(s) 1/2" in early.stderr and "3 image(s) pending" in early.stderr
    assert not root_attrs(merged)["complete"]
    assert naf(*base, "--shard", "1/2", "-o", str(tmp_path / "b.h5")).returncode == 0
    done = naf("merge", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "-o", str(merged))
    assert done.returncode == 0 and root_attrs(merged)["complete"]
    other = naf("extract", str(photos), "--long-side", "256", "--device", "cpu", "--shard", "1/2", "-o", str(tmp_path / "c.h5"))
    assert other.returncode == 0
    refused = naf("merge", str(tmp_path / "a.h5"), str(tmp_path / "c.h5"), "-o", str(tmp_path / "x.h5"))
    assert refused.returncode == 2 and "long_side=256" in refused.stderr and "long_side=224" in refused.stderr
    onto_a_run = naf("merge", str(tmp_path / "b.h5"), "-o", str(tmp_path / "a.h5"))
    assert onto_a_run.returncode == 2 and "not a merge" in onto_a_run.stderr


def test_ranks_that_do_not_run_one_job_stop_before_any_work(photos, tmp_path):
    """Two processes started as torchrun starts them (its environment variables), with other
    options: every rank names the difference, nothing is written."""
    port = str(free_port())
    ranks = [subprocess.Popen([*NAF, "extract", str(photos), "-o", str(tmp_path / "x.h5"), "--long-side", side],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                   "RANK": str(rank), "LOCAL_RANK": str(rank), "GLOO_SOCKET_IFNAME": "lo"})
             for rank, side in enumerate(("224", "256"))]
    results = [process.communicate(timeout=300) for process in ranks]
    assert [process.returncode for process in ranks] == [2, 2]
    assert all("long_side (224 vs 256)" in err and "fix:" in err for _, err in results), results
    assert not list(tmp_path.glob("x.h5*"))


@pytest.mark.parametrize("args,env,message", [
    (["--shard", "2/2"], {}, "0 <= I < N"),
    (["--shard", "one/two"], {}, "is not I/N"),
    (["--shard", "0/2", "--overwrite"], {}, "delete"),
    (["--shard", "0/2"], {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "drop --shard under torchrun"),
])
def test_split_options_are_checked_before_any_work(photos, tmp_path, args, env, message):
    out = tmp_path / "o.h5"
    result = naf("extract", str(photos), "-o", str(out), *args, env=env)
    assert result.returncode == 2 and message in result.stderr and "fix:" in result.stderr
    assert not out.exists() and not out.with_name("o.h5.shards").exists()


def test_the_index_converges_when_another_part_publishes_during_its_write(tmp_path, monkeypatch):
    """Part A rebuilds the index while part B publishes a shard between A's scan and A's rename:
    A sees the folder changed and writes again, so the index holds B's shard too."""
    import torch

    from naf_cli.pipeline.feature_map import FeatureMap
    from naf_cli.pipeline.hdf5 import publishing
    from naf_cli.pipeline.hdf5 import sink as h5sink
    from naf_cli.pipeline.partition import Partition

    out = tmp_path / "race.h5"
    a, b = h5sink.HDF5FeatureSink(out), h5sink.HDF5FeatureSink(out)
    a.prepare({}, Partition(0, 2))
    b.prepare({}, Partition(1, 2))
    a.begin({}, ["x.png", "y.png"])
    b.begin({}, ["x.png", "y.png"])
    a.write("x.png", FeatureMap.held(torch.ones(4, 2, 2)), {})
    b.write("y.png", FeatureMap.held(torch.zeros(4, 2, 2)), {})
    real_write_index = publishing.write_index
    calls = []

    def write_index_while_b_publishes(*args, **kwargs):
        seconds = real_write_index(*args, **kwargs)
        if not calls:  # B's shard appears after A's scan, before A looks again
            b._close_shard()
        calls.append(sorted(args[2]))
        return seconds

    monkeypatch.setattr(publishing, "write_index", write_index_while_b_publishes)
    a.finish()
    assert calls == [["x.png"], ["x.png", "y.png"]]
    with h5py.File(out, "r") as f:
        assert dataset_names(f["features"]) == ["x.png", "y.png"]


def test_run_status_needs_every_part_of_one_split_over_the_same_inputs():
    from naf_cli.pipeline.hdf5.layout import PartState, run_status
    from naf_cli.pipeline.partition import Partition

    def part(i, n, finished=True, digest="d", skipped=()):
        return PartState(Partition(i, n), finished, 6, digest, list(skipped))

    six = [str(i) for i in range(6)]
    assert run_status([part(0, 2), part(1, 2)], six).complete
    assert not run_status([part(0, 2), part(1, 2)], six[:5]).complete  # an image no longer linked (damaged, missing)
    assert not run_status([part(0, 2), part(1, 2, finished=False)], six).complete
    assert run_status([part(0, 2)], []).pending_parts == ["1/2"]
    mixed = run_status([part(0, 2), part(1, 2), part(0, 3)], [])
    assert not mixed.complete and "different splits" in mixed.problem
    assert "different inputs" in run_status([part(0, 2), part(1, 2, digest="e")], []).problem
    skips = run_status([part(0, 2, skipped=[("a", "bad")]), part(1, 2, skipped=[("b", "bad")])], ["b"])
    assert skips.skipped == [("a", "bad")]  # done by a later run: no longer skipped


def test_a_part_file_removed_while_another_part_lists_them_is_passed_over(tmp_path):
    """Parts of a new split start at once: each removes the old split's part files, so one part
    may list a file that a sibling deletes before it is read. That is not a damaged file."""
    from naf_cli.pipeline.hdf5.layout import PartState, part_file, read_parts
    from naf_cli.pipeline.partition import Partition

    for index in range(2):
        PartState(Partition(index, 2), True, 6, "d").write(tmp_path)
    PartState(Partition(0, 3), False, 6, "d").write(tmp_path)
    doomed = part_file(tmp_path, Partition(1, 2))

    class SiblingDeletesAfterListing(type(tmp_path)):
        def glob(self, pattern):
            listed = list(super().glob(pattern))
            doomed.unlink()  # the sibling's _remove_stale, between this part's listing and its read
            return iter(listed)

    parts = read_parts(SiblingDeletesAfterListing(tmp_path))
    assert [(p.partition.index, p.partition.count) for p in parts] == [(0, 2), (0, 3)]
    doomed.write_text("{not json")  # a file that is there but damaged is still an error with its fix
    with pytest.raises(Exception, match=r"part-1of2.json cannot be read .* fix: delete it"):
        read_parts(tmp_path)


# --pca: each process fits the basis on its own; the split runs agree with one process on it
PCA = ["--pca", "8"]


@pytest.fixture(scope="module")
def single_pca(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single-pca") / "one.h5"
    result = naf(*RUN, *PCA, str(photos), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def pca_arrays(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {name: f["pca"][name][()].tobytes() for name in f["pca"]}


def test_torchrun_ranks_agree_on_the_pca_basis(photos, single_pca, tmp_path):
    out = tmp_path / "t.h5"
    result = torchrun("--standalone", "--nproc-per-node", "2", "-m", "naf_cli", *RUN, *PCA, str(photos), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert_complete_and_equal(out, single_pca, parts=2)
    assert pca_arrays(out) == pca_arrays(single_pca) and len(pca_arrays(out)) == 4
    assert root_attrs(out)["pca_sha256"] == root_attrs(single_pca)["pca_sha256"]


def test_separate_pca_shard_runs_agree_on_the_basis_and_merge(photos, single_pca, tmp_path):
    parts = [tmp_path / f"p{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):  # each in its own folder: nothing shared but the inputs
        result = naf(*RUN, *PCA, str(photos), "--shard", f"{i}/2", "-o", str(part))
        assert result.returncode == 0, result.stderr
    merged = tmp_path / "merged.h5"
    result = naf("merge", *map(str, parts), "-o", str(merged))
    assert result.returncode == 0, result.stderr
    assert_complete_and_equal(merged, single_pca, parts=2)
    assert pca_arrays(merged) == pca_arrays(single_pca)
