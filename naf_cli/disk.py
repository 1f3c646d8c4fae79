"""Writing files so that a crash, a full disk or another process never sees half of one.

Every output but the HDF5 shards (written in place as ``.partial`` files, then renamed) goes
through ``replacing``: written to a temporary file beside it, fsynced and renamed over it, the
temporary file removed when the write fails, and a write that does not fit reported with its fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from naf_cli.errors import OutputError, RunError, first_line

# room kept beyond the data for HDF5's own metadata (object headers, chunk indexes, checksums)
METADATA_SLACK = 64 << 10
# errors of a write that does not fit: a full disk, a quota, a file-size limit (``ulimit -f``)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def writer_id() -> str:
    """Host and process, unique across the nodes of a run: names temporary files."""
    return f"{socket.gethostname()}-{os.getpid()}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_reason(err: OSError) -> str:
    """What an OSError says, in one line (HDF5's messages run to several)."""
    return os.strerror(err.errno) if err.errno else first_line(err)


def write_failure(path: Path | None, err: OSError) -> RunError:
    """A write that failed once work had started (exit 1), with the fix for its cause; ``path``
    None when the error does not say which file."""
    folder = "the output folder" if path is None else Path(path).parent
    if err.errno in NO_ROOM:
        fix = "free disk space (or raise the quota or `ulimit -f`), then rerun the same command: finished work is kept"
    elif err.errno in NOT_WRITABLE:
        fix = f"make {folder} writable or choose another output path, then rerun"
    else:
        fix = f"check {folder} (space, permissions, the disk), then rerun the same command: finished work is kept"
    return RunError(f"cannot write {'the output' if path is None else path}: {os_reason(err)}; fix: {fix}")


def check_writable(folder: Path, option: str = "-o") -> None:
    """OutputError (exit 2, before any work) when ``folder`` cannot be created or written: the
    nearest existing folder on its path is a file, read-only (file system or permissions)."""
    # os.path's tests answer False where Path's raise (a folder this user cannot search)
    existing = Path(os.path.abspath(folder))
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        what = "" if existing == Path(os.path.abspath(folder)) else f"cannot create {folder}: "
        raise OutputError(f"{what}{existing} is a file, not a folder; fix: choose another {option} path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {existing}: it is read-only for this user (or on a read-only disk); fix: "
                          f"choose another {option} path, or make it writable")


def check_output_file(output: Path) -> None:
    """OutputError (exit 2, before any work) for an ``-o`` file that cannot be written: a
    folder, in a folder that does not exist, or in one that cannot be written."""
    if os.path.isdir(output):
        raise OutputError(f"-o {output} is a folder; fix: name an .h5 file, e.g. -o {output / 'features.h5'}")
    parent = Path(os.path.abspath(output)).parent
    if not os.path.exists(parent):
        raise OutputError(f"folder {output.parent} does not exist; fix: create it or choose another -o path")
    check_writable(parent)


def temporary_path(path: Path) -> Path:
    """``.NAME.tmp-HOST-PID`` beside ``path``: hidden, and named by its writer so that a later run
    can tell a dead writer's leftover from a live one's (``remove_stale_temporaries``)."""
    return path.with_name(f".{path.name}.tmp-{writer_id()}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write ``path``'s new content to; on success it is fsynced and
    renamed over ``path`` (readers see the old file or the new one), on failure removed. An
    OSError becomes ``write_failure``'s RunError."""
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_failure(path, err) from err
        raise


# folders this process has swept: a folder is scanned once, not at every write into it (a
# denoise of N images into one folder would otherwise list it N times)
_swept: set[str] = set()


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files in ``path``'s folder left by writers on this host that no longer run (a
    killed write) are removed, once per folder and process; those of live writers and of other
    hosts are left alone."""
    folder = os.path.abspath(path.parent)
    if folder in _swept:
        return
    _swept.add(folder)
    marker = f".tmp-{socket.gethostname()}-"
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") or marker not in entry.name:
                continue
            pid = entry.name.rsplit(marker, 1)[1]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except PermissionError:  # alive, another user's
                pass


def write_json_atomic(path: Path, data: object) -> None:
    """Write, fsync, rename: readers see the old file or the new one, never part of one."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")


def check_room(path: Path, needed: int, what: str) -> None:
    """RunError before a write that cannot fit: HDF5 cannot recover from a failed write (the
    process can even crash when the half-written file is cleaned up), so it must not start one.

    Checks the free space of ``path``'s file system and the process's file-size limit
    (``ulimit -f``) against ``path``'s size plus ``needed`` bytes (and a little for metadata).
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
