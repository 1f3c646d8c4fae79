"""Writing files so that a crash, a full disk or another process never sees half of one."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
from pathlib import Path

from naf_cli.errors import RunError

# room kept beyond the data for HDF5's own metadata
METADATA_SLACK = 1 << 20


def writer_id() -> str:
    """Host and process, unique across the nodes of a run: names temporary files."""
    return f"{socket.gethostname()}-{os.getpid()}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: object) -> None:
    """Write, fsync, rename: readers see the old file or the new one, never part of one."""
    tmp = path.with_name(f".{path.name}.tmp-{writer_id()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, path)


def check_room(path: Path, needed: int, what: str) -> None:
    """RunError before a write that cannot fit: HDF5 cannot recover from a failed write (the
    process can even crash when the half-written file is cleaned up), so it must not start one.

    Checks the free space of ``path``'s file system and the process's file-size limit
    (``ulimit -f``) against ``path``'s size plus ``needed`` bytes.
    """
    from naf_cli.pipeline.memory import human_bytes

    needed += METADATA_SLACK
    folder = path.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise RunError(f"cannot write {what}: about {human_bytes(needed)} needed, {human_bytes(free)} free on the disk "
                       f"of {folder}; fix: free disk space, then rerun the same command to resume")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = path.stat().st_size if path.exists() else 0
    if limit != resource.RLIM_INFINITY and size + needed > limit:
        raise RunError(f"cannot write {what}: {path.name} would grow to about {human_bytes(size + needed)}, past the "
                       f"file-size limit of {human_bytes(limit)} (ulimit -f); fix: raise the limit or free disk space, "
                       f"then rerun the same command to resume (or use a smaller --shard-images)")
