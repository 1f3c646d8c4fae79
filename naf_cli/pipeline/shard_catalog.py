"""A run's state read back from its shard folder: the published shards and the parts' state files.

Everything read here is immutable once it appears (a shard is renamed into place when
closed; a part file is replaced atomically), so reading is safe while other processes of
the run are still writing. The index users open is built from this alone: any process
(a part that finishes, ``naf merge``) can build it, with no message between processes.

Files of one shard folder::

    run.json                 the settings every part must share
    part-<I>of<N>.json       one per part: finished or not, inputs it saw, inputs it skipped
    shard-<I>of<N>-000003.h5 a published shard of part I of N (``shard-000003.h5`` for a whole run)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from naf_cli.errors import OutputError, RunError
from naf_cli.feature_format import FEATURES_GROUP, as_attr, list_datasets
from naf_cli.pipeline.disk import check_room, fsync_path, write_json_atomic, writer_id
from naf_cli.pipeline.partition import Partition

RUN_FILE = "run.json"
_SHARD = re.compile(r"^shard-(?:(\d+)of(\d+)-)?(\d+)\.h5(\.partial)?$")
_PART = re.compile(r"^part-(\d+)of(\d+)\.json$")


def shard_file_name(partition: Partition, number: int) -> str:
    """``shard-000003.h5`` for a whole run, ``shard-2of8-000003.h5`` for part 2 of 8."""
    return f"shard-{number:06d}.h5" if partition.is_whole else f"shard-{partition.tag}-{number:06d}.h5"


def shard_owner(file_name: str) -> tuple[Partition, int, bool] | None:
    """(the part that wrote it, its number, whether still ``.partial``) of a shard file name."""
    match = _SHARD.match(file_name)
    if match is None:
        return None
    index, count, number, partial = match.groups()
    part = Partition(int(index), int(count)) if count is not None else Partition()
    return part, int(number), partial is not None


def part_file(folder: Path, partition: Partition) -> Path:
    return folder / f"part-{partition.tag}.json"


def inputs_digest(names: Iterable[str]) -> str:
    """SHA-256 of the input names in order: parts that split one list must see the same list."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


@dataclass
class PartState:
    """What one part says about itself in ``part-<I>of<N>.json``."""

    partition: Partition
    finished: bool = False
    inputs: int = 0  # the whole run's inputs, as this part listed them
    inputs_sha256: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"part": [self.partition.index, self.partition.count], "finished": self.finished, "inputs": self.inputs,
                "inputs_sha256": self.inputs_sha256, "host": socket.gethostname(), "pid": os.getpid(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "skipped": [{"image": name, "reason": reason} for name, reason in self.skipped]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartState:
        index, count = (int(v) for v in data["part"])
        skipped = [(str(s["image"]), str(s["reason"])) for s in data.get("skipped") or []]
        return cls(Partition(index, count), bool(data.get("finished")), int(data.get("inputs", 0)),
                   str(data.get("inputs_sha256", "")), skipped)

    def write(self, folder: Path) -> None:
        write_json_atomic(part_file(folder, self.partition), self.to_json())


def read_parts(folder: Path) -> list[PartState]:
    """Every part file of ``folder``, in part order."""
    parts = []
    for path in sorted(folder.glob("part-*of*.json")):
        if not _PART.match(path.name):
            continue
        try:
            parts.append(PartState.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OutputError(f"{path} cannot be read ({err}); fix: delete it and rerun that part to write it again") from err
    return sorted(parts, key=lambda p: (p.partition.count, p.partition.index))


class ShardCatalog:
    """The published shards of one shard folder and the images each holds.

    A published shard never changes, so each is opened once per process; ``refresh`` only
    lists the folder and opens shards it has not seen.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._names: dict[str, list[str]] = {}

    def refresh(self) -> tuple[str, ...]:
        """Re-list the folder; returns the published shard files, sorted."""
        present = sorted(p.name for p in self.folder.glob("shard-*.h5") if (owner := shard_owner(p.name)) and not owner[2])
        for name in present:
            if name not in self._names:
                try:
                    with h5py.File(self.folder / name, "r") as handle:
                        self._names[name] = list_datasets(handle[FEATURES_GROUP])
                except (OSError, KeyError) as err:
                    raise OutputError(f"{self.folder / name} cannot be read ({err}); fix: delete it (its images are "
                                      f"redone) and rerun the same command") from err
        for gone in set(self._names) - set(present):
            del self._names[gone]
        return tuple(present)

    def add(self, shard: str, names: Sequence[str]) -> None:
        """A shard this process just published: known without reopening it."""
        self._names[shard] = list(names)

    def links(self) -> dict[str, str]:
        """Image name -> shard file. An image in two shards (runs that overlapped) keeps the first,
        by file name; by the equality rule both hold the same bytes."""
        links: dict[str, str] = {}
        for shard in sorted(self._names):
            for name in self._names[shard]:
                links.setdefault(name, shard)
        return links


@dataclass
class RunStatus:
    """Where the whole run stands, from its part files and published images."""

    parts_total: int
    parts_finished: list[int]
    inputs: int
    skipped: list[tuple[str, str]]
    complete: bool
    problem: str = ""  # why it cannot be complete although parts say finished

    @property
    def pending_parts(self) -> list[str]:
        return [f"{i}/{self.parts_total}" for i in range(self.parts_total) if i not in self.parts_finished]

    def attrs(self) -> dict[str, object]:
        return {"complete": self.complete, "images_total": self.inputs, "images_skipped": len(self.skipped),
                "skipped_images": json.dumps([{"image": n, "reason": r} for n, r in self.skipped], ensure_ascii=False),
                "parts_total": self.parts_total, "parts_finished": np.asarray(self.parts_finished, dtype=np.int64)}


def run_status(parts: Sequence[PartState], done: Iterable[str]) -> RunStatus:
    """Complete when one split (one N) has every part 0..N-1 finished, all over the same inputs."""
    done = set(done)
    counts = sorted({p.partition.count for p in parts})
    count = counts[-1] if counts else 1
    current = [p for p in parts if p.partition.count == count]
    finished = sorted({p.partition.index for p in current if p.finished})
    seen: set[str] = set()
    skipped = []
    for part in current:
        for name, reason in part.skipped:
            if name not in done and name not in seen:
                seen.add(name)
                skipped.append((name, reason))
    inputs = max((p.inputs for p in current), default=0)
    problem = ""
    if len(counts) > 1:
        problem = f"parts of different splits ({', '.join(f'N={n}' for n in counts)})"
    elif len({p.inputs_sha256 for p in current}) > 1:
        problem = "the parts listed different inputs (was the folder changed between their starts?)"
    complete = bool(current) and not problem and len(finished) == count
    return RunStatus(count, finished, inputs, sorted(skipped), complete, problem)


def write_index(output: Path, attrs: Mapping[str, object], links: Mapping[str, str]) -> float:
    """The file users open: ``attrs`` and a relative external link ``/features/<name>`` -> ``links[name]``
    for every image. Written to a temporary file, fsynced and renamed over ``output``; returns seconds."""
    started = time.monotonic()
    tmp = output.with_name(f".{output.name}.tmp-{writer_id()}")
    check_room(tmp, 200 * len(links), f"the index {output}")
    try:
        with h5py.File(tmp, "w") as index:
            for key, value in attrs.items():
                index.attrs[key] = as_attr(value)
            group = index.create_group(FEATURES_GROUP)
            for name in sorted(links):
                group[name] = h5py.ExternalLink(links[name], f"/{FEATURES_GROUP}/{name}")
        fsync_path(tmp)
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
        raise RunError(f"cannot write the index {output}: {reason}; fix: free disk space, then rerun the same "
                       f"command to resume (finished shards are kept)") from err
    return time.monotonic() - started
