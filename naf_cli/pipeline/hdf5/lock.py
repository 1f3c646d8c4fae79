"""One writer per part of an output: POSIX record locks on ``<output>.lock``, held for a run's life.

A lock lives on a dedicated file beside the output, never on the index (replaced by rename)
nor inside the shard folder (``--overwrite`` deletes it), and it is taken before anything
in the output folder is read, created or deleted. ``fcntl.lockf`` record locks are owned
by the process: the kernel drops them when it dies (``kill -9`` included), and forked
decoding workers do not inherit them, so an orphaned worker never blocks the rerun. They
are also dropped when the process closes *any* descriptor of the file, so this module
opens it once per process and reads it through that descriptor only.

The byte ranges (locks may lie beyond the end of the file)::

    GATE                  exclusive for the moment a part checks and takes its locks
    SPLITS + N            shared by every live part of a run split N ways (a whole run: N = 1)
    PARTS + I             exclusive: part I of the live split

A part of N refuses to start while any other split holds its byte (a run with another N
is alive), and while its own part byte is held (the same part runs already). A whole run
is the one part of N = 1, so it excludes every part and every part excludes it.

Each holder writes who it is (pid, host, start time, part) into slot I of the file's
text, 512 bytes a slot, for the message a refused run prints. The last holder to leave
deletes the file (checked with an exclusive lock on every byte); a process that locked a
file deleted meanwhile sees another inode at the path and starts again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from naf_cli.errors import OutputError
from naf_cli.pipeline.partition import Partition

GATE = 1 << 40
SPLITS = GATE + 1
MAX_SPLIT = 1 << 30
PARTS = 1 << 41
SLOT = 512
# the gate is held for microseconds; a process stopped while holding it is waited for this long
GATE_SECONDS = 10.0
# errors that mean the file system keeps no locks (some network and FUSE file systems)
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})

# lock files this process holds, by path: POSIX locks never conflict within one process, and
# closing any descriptor of the file drops them all, so one descriptor serves the process
_HELD: dict[Path, RunLock] = {}


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


@dataclass
class Holder:
    """Who holds a part, as written in its slot."""

    pid: int
    host: str
    started: str
    part: str

    def describe(self) -> str:
        part = "" if self.part == "0/1" else f"part {self.part}, "
        return f"{part}pid {self.pid} on {self.host}, started {self.started}"


class RunLock:
    """The lock of one part of the run writing ``output``; ``acquire`` or an OutputError.

    Parts of one split may also run in one process (each with its own sink): they share the
    process's descriptor of the lock file, which is closed when the last of them releases.
    """

    def __init__(self, output: Path, partition: Partition) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.partition = partition
        self.fd: int | None = None
        self.parts: set[int] = set()  # the parts this process holds through this descriptor
        self.released = False
        # one key for every spelling of the path (``..``, links) and any later chdir
        self.key = Path(os.path.realpath(self.path))
        self.unsupported = False  # the file system keeps no locks: runs are not protected

    @classmethod
    def acquire(cls, output: Path, partition: Partition) -> RunLock:
        lock = cls(output, partition)
        key = lock.key
        held = _HELD.get(key)
        if held is None:
            lock._take()
            lock.parts.add(partition.index)
            _HELD[key] = lock
            return lock
        if held.partition.count != partition.count or partition.index in held.parts:
            raise OutputError(f"{output} is being written by this process already (part {held.partition.label}); fix: "
                              f"wait for that run to end, or choose another -o path")
        # another part of the same split in this process: its own part byte, on the shared descriptor
        if not held.unsupported:
            if not held._lock(fcntl.LOCK_EX, 1, PARTS + partition.index):
                lock.fd = held.fd
                message = lock._refusal(other_split=False)
                lock.fd = None
                raise OutputError(message)
            held._write_holder(partition)
        held.parts.add(partition.index)
        lock.fd, lock.unsupported, lock.parts = held.fd, held.unsupported, held.parts
        return lock

    def release(self) -> None:
        """Drop this part's lock; the last part of this process drops every lock (closing the
        descriptor) and deletes the file when no other process holds any part of it."""
        if self.fd is None or self.released:
            return
        self.released = True
        key = self.key
        self.parts.discard(self.partition.index)
        if self.parts:  # sibling parts of this process go on, on the descriptor the first one opened
            if not self.unsupported:
                with contextlib.suppress(OSError):
                    self._unlock(1, PARTS + self.partition.index)
            return
        owner = _HELD.get(key)
        try:
            if self.unsupported or self._lock(fcntl.LOCK_EX, 0, 0):  # every byte: nobody else is in
                with contextlib.suppress(OSError):
                    if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                        os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None
            if owner is not None:
                owner.fd = None
            _HELD.pop(key, None)

    # -- taking the locks ---------------------------------------------------------------------

    def _take(self) -> None:
        # the last holder deletes the file; a process that locked a file deleted meanwhile starts again
        for _ in range(100):
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"cannot create the lock file {self.path}: {os.strerror(err.errno or 0) or err}; fix: "
                                  f"check the permissions of {self.path.parent}, or choose another -o path") from err
            try:
                if self._take_locks():
                    return
            except BaseException:
                os.close(self.fd)
                self.fd = None
                raise
            os.close(self.fd)
            self.fd = None
        raise OutputError(f"{self.path} keeps being replaced by other processes; fix: start one naf run per output")

    def _current(self) -> bool:
        """Whether the open file is still the one at ``path`` (the last holder may have deleted it)."""
        assert self.fd is not None
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def _lock(self, kind: int, length: int, start: int) -> bool:
        """One non-blocking lock request; False when another process holds a conflicting lock."""
        assert self.fd is not None
        try:
            fcntl.lockf(self.fd, kind | fcntl.LOCK_NB, length, start)
            return True
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            if err.errno in NO_LOCKS:
                raise
            raise OutputError(f"cannot lock {self.path}: {os.strerror(err.errno or 0) or err}; fix: put -o on a local "
                              f"disk, or on a file system with POSIX locks (docs/scale-out.md, File systems)") from err

    def _unlock(self, length: int, start: int) -> None:
        assert self.fd is not None
        fcntl.lockf(self.fd, fcntl.LOCK_UN, length, start)

    def _take_locks(self) -> bool:
        """Take the part's locks; False when the file was deleted meanwhile (open it again)."""
        count, index = self.partition.count, self.partition.index
        if count >= MAX_SPLIT:
            raise OutputError(f"a split into {count} parts is more than naf can lock; fix: use fewer than {MAX_SPLIT} parts")
        try:
            deadline = time.monotonic() + GATE_SECONDS
            while not self._lock(fcntl.LOCK_EX, 1, GATE):
                if time.monotonic() > deadline:
                    raise OutputError(f"{self.output}: another naf run is stuck while starting (its lock file "
                                      f"{self.path} stays busy); fix: stop that run, or choose another -o path")
                time.sleep(0.02)
        except OSError as err:
            if err.errno not in NO_LOCKS:
                raise
            self.unsupported = True
            return True
        try:
            if not self._current():
                return False
            # any other split alive holds its byte in [SPLITS + 1, SPLITS + MAX_SPLIT)
            below, above = (1, count - 1), (count + 1, MAX_SPLIT - count - 1)
            for first, length in (below, above):
                if length > 0:
                    if not self._lock(fcntl.LOCK_EX, length, SPLITS + first):
                        raise OutputError(self._refusal(other_split=True))
                    self._unlock(length, SPLITS + first)
            if not self._lock(fcntl.LOCK_EX, 1, PARTS + index):
                raise OutputError(self._refusal(other_split=False))
            if not self._lock(fcntl.LOCK_SH, 1, SPLITS + count):  # only a sibling in the gate could hold it otherwise
                raise OutputError(self._refusal(other_split=True))
            self._write_holder(self.partition)
            return True
        finally:
            self._unlock(1, GATE)

    # -- who holds it -------------------------------------------------------------------------

    def _write_holder(self, partition: Partition) -> None:
        assert self.fd is not None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "part": partition.label,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = json.dumps(record, ensure_ascii=True)[:SLOT - 1].ljust(SLOT - 1) + "\n"
        # who holds it is for messages only: a full disk leaves the slot blank, the locks still hold
        with contextlib.suppress(OSError):
            os.pwrite(self.fd, text.encode("ascii"), SLOT * partition.index)

    def _holders(self) -> list[tuple[int, Holder]]:
        """Every slot written in the file, with its part index."""
        assert self.fd is not None
        size = os.fstat(self.fd).st_size
        holders = []
        for slot in range(size // SLOT):
            raw = os.pread(self.fd, SLOT, slot * SLOT).decode("ascii", "replace").strip().strip("\x00")
            try:
                data = json.loads(raw)
                holders.append((slot, Holder(int(data["pid"]), str(data["host"]), str(data["started"]), str(data["part"]))))
            except (ValueError, KeyError, TypeError):
                continue
        return holders

    def _alive(self, slot: int) -> bool:
        """Whether part ``slot``'s byte is held by a live process (a probe: taken and given back if free)."""
        assert self.fd is not None
        if self._lock(fcntl.LOCK_EX, 1, PARTS + slot):
            self._unlock(1, PARTS + slot)
            return False
        return True

    def _refusal(self, other_split: bool) -> str:
        if other_split:
            live = [holder for slot, holder in self._holders() if self._alive(slot)]
            who = live[0].describe() if live else "a run split another way"
        else:
            mine = dict(self._holders()).get(self.partition.index)
            who = mine.describe() if mine is not None else f"part {self.partition.label}"
        doing = "this output" if self.partition.is_whole else f"part {self.partition.label} of this output"
        return (f"{self.output} is being written by another naf run ({who}); it holds {doing} until it ends; fix: wait "
                f"for it to finish (then rerun to resume), or choose another -o path")
