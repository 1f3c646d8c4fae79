"""One writer per part: POSIX record locks on ``<output>.lock``, held by real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from naf_cli.errors import OutputError
from naf_cli.pipeline.hdf5.lock import RunLock, lock_path
from naf_cli.pipeline.partition import Partition

HOLD = """
import os, sys, time
from pathlib import Path
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.hdf5.lock import RunLock
index, count, fork = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "fork"
RunLock.acquire(Path(sys.argv[1]), Partition(index, count))
child = os.fork() if fork else -1  # a child, as a decoding worker is: it inherits the descriptor, not the locks
if child == 0:
    time.sleep(120)
    os._exit(0)
print("held", child, flush=True)
time.sleep(120)
"""


class Holder:
    """A process holding part I of N of ``output``'s lock until killed."""

    def __init__(self, output: Path, index: int = 0, count: int = 1, fork: bool = False) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(output), str(index), str(count),
                                         "fork" if fork else "-"], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line[0] == "held", line
        self.child = int(line[1]) if fork else None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)


@pytest.fixture
def output(tmp_path) -> Path:
    return tmp_path / "o.h5"


def refused(output: Path, partition: Partition) -> str:
    with pytest.raises(OutputError) as caught:
        RunLock.acquire(output, partition)
    return str(caught.value)


def test_a_whole_run_excludes_every_part_and_is_excluded(output):
    holder = Holder(output)
    try:
        message = refused(output, Partition())
        assert f"pid {holder.process.pid}" in message and "another naf run" in message and "fix:" in message
        assert "another naf run" in refused(output, Partition(1, 4))
    finally:
        holder.kill()
    RunLock.acquire(output, Partition(1, 4)).release()  # the kernel dropped the dead holder's locks


def test_parts_of_one_split_run_together_but_not_twice_nor_beside_another_split(output):
    holders = [Holder(output, 0, 3), Holder(output, 2, 3)]
    try:
        RunLock.acquire(output, Partition(1, 3)).release()  # a sibling: runs beside them
        message = refused(output, Partition(0, 3))  # the part that is already running
        assert f"part 0/3, pid {holders[0].process.pid}" in message
        assert f"part 0/3, pid {holders[0].process.pid}" in refused(output, Partition(0, 2))  # another split
        assert "another naf run" in refused(output, Partition())
    finally:
        for holder in holders:
            holder.kill()
    lock = RunLock.acquire(output, Partition(0, 2))
    lock.release()
    assert not lock_path(output).exists()  # the last holder removes the file


def test_parts_of_one_split_share_one_process_but_a_part_or_split_twice_is_refused(output):
    first = RunLock.acquire(output, Partition(0, 3))
    second = RunLock.acquire(output, Partition(1, 3))
    assert "this process" in refused(output, Partition(1, 3))
    assert "this process" in refused(output, Partition())
    first.release()  # the sibling keeps the file's locks: another process still cannot take part 1
    holder_code = ("import sys; from pathlib import Path; from naf_cli.pipeline.hdf5.lock import RunLock; "
                   "from naf_cli.pipeline.partition import Partition; RunLock.acquire(Path(sys.argv[1]), Partition(1, 3))")
    other = subprocess.run([sys.executable, "-c", holder_code, str(output)], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and f"part 1/3, pid {os.getpid()}" in other.stderr
    third = RunLock.acquire(output, Partition(0, 3))  # part 0 was given back
    third.release()
    second.release()
    assert not lock_path(output).exists()
    RunLock.acquire(output, Partition()).release()


def test_a_kill_9_frees_the_output_even_with_a_forked_worker_alive(output):
    holder = Holder(output, fork=True)
    assert holder.child is not None
    try:
        refused(output, Partition())
        holder.kill()
        os.kill(holder.child, 0)  # the forked child lives on, with the descriptor
        RunLock.acquire(output, Partition()).release()
    finally:
        os.kill(holder.child, signal.SIGKILL)
