"""A run's state read back from its shard folder: the published shards and the parts' state files.

Everything read here is immutable once it appears (a shard is renamed into place when
closed; a part file is replaced atomically), so reading is safe while other processes of
the run are still writing. The index users open is built from this alone: any process
(a part that finishes, ``naf merge``) can build it, with no message between processes.

Files of one shard folder::

    run.json                      the run's id and the settings every part must share
    part-<I>of<N>.json            one per part: finished or not, inputs it saw, inputs it skipped
    shard-<id>-<I>of<N>-000003.h5 a published shard of part I of N (``shard-<id>-000003.h5`` for a whole run)
    damaged.json                  images ``naf verify`` found damaged, and in which shard
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from naf_cli.disk import check_room, os_reason, replacing, temporary_path, write_json_atomic
from naf_cli.errors import NafError, OutputError, first_line
from naf_cli.feature_format import FEATURES_GROUP, as_attr, list_datasets, plain_attr, string_array
from naf_cli.pipeline.partition import Partition

SHARD_FOLDER_SUFFIX = ".shards"
RUN_FILE = "run.json"
DAMAGED_FILE = "damaged.json"
RUN_ID_LENGTH = 12
_SHARD = re.compile(rf"^shard-(?:([0-9a-f]{{{RUN_ID_LENGTH}}})-)?(?:(\d+)of(\d+)-)?(\d+)\.h5(\.partial)?$")
_PART = re.compile(r"^part-(\d+)of(\d+)\.json$")
# root attributes of a shard that bind it to its run
SHARD_RUN_ID, SHARD_FINGERPRINT, SHARD_SETTINGS = "run_id", "settings_sha256", "run_settings"


def shard_folder(output: Path) -> Path:
    """The shard folder of the index file ``output``: ``feats.h5`` -> ``feats.h5.shards``."""
    return output.with_name(output.name + SHARD_FOLDER_SUFFIX)


def index_file(folder: Path) -> Path:
    """The index file of a shard folder (``shard_folder`` undone)."""
    return folder.with_name(folder.name.removesuffix(SHARD_FOLDER_SUFFIX))


def shard_file_name(run_id: str, partition: Partition, number: int) -> str:
    """``shard-<run id>-000003.h5`` for a whole run, ``shard-<run id>-2of8-000003.h5`` for part 2 of 8.

    The run id in the name means a missing shard's name is never another run's file (HDF5
    looks for a missing external link's target in the working folder too)."""
    part = "" if partition.is_whole else f"{partition.tag}-"
    return f"shard-{run_id}-{part}{number:06d}.h5"


@dataclass(frozen=True)
class ShardName:
    run_id: str  # "" for shards of format version 2, which carried no id
    partition: Partition
    number: int
    partial: bool


def shard_owner(file_name: str) -> ShardName | None:
    """What a shard file name says: its run, the part that wrote it, its number, whether still ``.partial``."""
    match = _SHARD.match(file_name)
    if match is None:
        return None
    run_id, index, count, number, partial = match.groups()
    part = Partition(int(index), int(count)) if count is not None else Partition()
    return ShardName(run_id or "", part, int(number), partial is not None)


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
        except FileNotFoundError:  # listed, then removed by a part of a new split (``resume.remove_stale``)
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OutputError(f"{path} cannot be read ({err}); fix: delete it and rerun that part to write it again") from err
    return sorted(parts, key=lambda p: (p.partition.count, p.partition.index))


class RunIdentity(Protocol):
    """What binds shards to their run (``naf_cli.pipeline.resume.RunRecord``)."""

    @property
    def run_id(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class ShardRecord:
    """What a published shard says of itself: its run, the images it holds, or why it cannot be read."""

    run_id: str = ""
    fingerprint: str = ""
    settings: str = ""  # the run's settings as JSON, to rebuild a lost run.json
    names: tuple[str, ...] = ()
    unreadable: str = ""


def read_shard_record(path: Path) -> ShardRecord:
    try:
        with h5py.File(path, "r") as handle:
            attrs = handle.attrs
            return ShardRecord(str(plain_attr(attrs.get(SHARD_RUN_ID, ""))), str(plain_attr(attrs.get(SHARD_FINGERPRINT, ""))),
                               str(plain_attr(attrs.get(SHARD_SETTINGS, ""))), tuple(list_datasets(handle[FEATURES_GROUP])))
    except (OSError, KeyError, ValueError) as err:
        return ShardRecord(unreadable=first_line(err))


class ShardCatalog:
    """The published shards of one shard folder and the images each holds.

    Only shards of the folder's run (``bind``: the id and settings fingerprint of its
    ``run.json``) are linked; others are *foreign* (copied in, or left by another run) and
    unreadable ones are reported, never linked. Images that ``naf verify`` found damaged
    (``damaged.json``) are not linked to the copy that is damaged. A published shard never
    changes, so each is opened once per process; ``refresh`` only lists the folder and
    opens shards it has not seen.
    """

    def __init__(self, folder: Path, record: RunIdentity | None = None) -> None:
        self.folder = Path(folder)
        self.record = record
        self._shards: dict[str, ShardRecord] = {}
        self.damaged: set[tuple[str, str]] = set()  # (image, shard file) pairs not to link

    def bind(self, record: RunIdentity) -> None:
        self.record = record

    def refresh(self) -> tuple[str, ...]:
        """Re-list the folder; returns the published shard files, sorted."""
        present = sorted(p.name for p in self.folder.glob("shard-*.h5") if (owner := shard_owner(p.name)) and not owner.partial)
        for name in present:
            if name not in self._shards or self._shards[name].unreadable:  # a failed read may pass (EMFILE, ESTALE)
                self._shards[name] = read_shard_record(self.folder / name)
        for gone in set(self._shards) - set(present):
            del self._shards[gone]
        self.damaged = read_damaged(self.folder)
        return tuple(present)

    def add(self, shard: str, names: Sequence[str]) -> None:
        """A shard this process just published: known without reopening it."""
        assert self.record is not None
        self._shards[shard] = ShardRecord(self.record.run_id, self.record.fingerprint, "", tuple(names))

    def belongs(self, shard: str) -> bool:
        record = self._shards.get(shard)
        return (record is not None and not record.unreadable and self.record is not None and bool(self.record.run_id)
                and record.run_id == self.record.run_id and record.fingerprint == self.record.fingerprint)

    def foreign(self) -> list[tuple[str, str]]:
        """(shard file, why it is not linked) for every published shard that is not the run's."""
        problems = []
        for shard, record in sorted(self._shards.items()):
            if record.unreadable:
                problems.append((shard, f"cannot be read ({record.unreadable}); its images are redone"))
            elif not self.belongs(shard):
                why = "no run id (an older naf-cli)" if not record.run_id else (
                    "another run's" if self.record is None or record.run_id != self.record.run_id else "other settings")
                problems.append((shard, f"belongs to {why}, not to the run in {RUN_FILE}; it is not linked"))
        return problems

    def recorded_runs(self) -> list[tuple[str, dict[str, object]]]:
        """(run id, settings) of the runs the readable shards say they belong to, the most shards
        first (to rebuild a lost run.json)."""
        counts = Counter((r.run_id, r.settings) for r in self._shards.values() if r.run_id and r.settings and not r.unreadable)
        runs = []
        for (run_id, settings), _ in counts.most_common():
            try:
                runs.append((run_id, json.loads(settings)))
            except ValueError:
                continue
        return runs

    def links(self) -> dict[str, str]:
        """Image name -> shard file, over the run's own shards. An image in two shards (runs that
        overlapped, or redone after ``naf verify``) keeps the first by file name that is not
        recorded as damaged; by the equality rule every good copy holds the same bytes."""
        links: dict[str, str] = {}
        for shard in sorted(self._shards):
            if not self.belongs(shard):
                continue
            for name in self._shards[shard].names:
                if (name, shard) not in self.damaged:
                    links.setdefault(name, shard)
        return links


def read_damaged(folder: Path) -> set[tuple[str, str]]:
    """(image, shard file) pairs ``naf verify`` recorded in ``damaged.json``."""
    try:
        entries = json.loads((folder / DAMAGED_FILE).read_text(encoding="utf-8"))
        return {(str(e["image"]), str(e["shard"])) for e in entries}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(f"{folder / DAMAGED_FILE} cannot be read ({err}); fix: delete it and run naf verify again") from err


def record_damaged(folder: Path, entries: Iterable[tuple[str, str, str]]) -> None:
    """Add (image, shard file, reason) entries to ``damaged.json`` (kept: a damaged copy stays damaged)."""
    path = folder / DAMAGED_FILE
    known: dict[tuple[str, str], str] = {}
    try:
        if path.is_file():
            for entry in json.loads(path.read_text(encoding="utf-8")):
                known[(str(entry["image"]), str(entry["shard"]))] = str(entry.get("reason", ""))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(f"{path} cannot be read ({err}); fix: delete it and run naf verify again") from err
    for image, shard, reason in entries:
        known[(image, shard)] = reason
    try:
        write_json_atomic(path, [{"image": image, "shard": shard, "reason": reason}
                                 for (image, shard), reason in sorted(known.items())])
    except NafError as err:
        cause = err.__cause__
        reason = os_reason(cause) if isinstance(cause, OSError) else first_line(err)
        raise OutputError(f"cannot record the damaged images in {path} ({reason}); fix: make room "
                          f"in {folder} or make it writable, and run naf verify again (until then a rerun does not know to "
                          f"redo them)") from err


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
                "skipped_images": string_array([n for n, _ in self.skipped]),
                "skipped_reasons": string_array([r for _, r in self.skipped]),
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
    # every input accounted for: an image whose copy was found damaged or whose shard went missing
    # is no longer linked, and keeps the run incomplete until it is redone
    accounted = len(done) + len(skipped) >= inputs
    complete = bool(current) and not problem and len(finished) == count and accounted
    return RunStatus(count, finished, inputs, sorted(skipped), complete, problem)


def producer_attrs(created: str | None = None) -> dict[str, object]:
    """Who wrote an index and when (``created``: keep an earlier start time)."""
    import naf_cli

    return {"producer": f"naf-cli {naf_cli.__version__}",
            "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_arrays(handle: h5py.File, arrays: Mapping[str, np.ndarray]) -> None:
    """Small datasets beside the features (``pca/mean``...), at their paths."""
    for path, array in arrays.items():
        handle.create_dataset(path, data=array)


def read_arrays(handle: h5py.File) -> dict[str, np.ndarray]:
    """Every dataset of a file outside ``/features``, by path (what ``write_arrays`` wrote)."""
    found: dict[str, np.ndarray] = {}

    def visit(name: str, node: object) -> None:
        if isinstance(node, h5py.Dataset):
            found[name] = node[()]

    for key in handle:
        if key == FEATURES_GROUP:
            continue
        node = handle[key]
        if isinstance(node, h5py.Group):
            node.visititems(lambda name, child, key=key: visit(f"{key}/{name}", child))
        else:
            visit(key, node)
    return found


def write_index(output: Path, attrs: Mapping[str, object], links: Mapping[str, str],
                arrays: Mapping[str, np.ndarray] | None = None) -> float:
    """The file users open: ``attrs``, a relative external link ``/features/<name>`` -> ``links[name]``
    for every image, and ``arrays`` (``write_arrays``). Written to a temporary file, fsynced and
    renamed over ``output``; returns seconds."""
    started = time.monotonic()
    check_room(temporary_path(output), 200 * len(links), f"the index {output}")  # the old index stays until replaced
    with replacing(output) as tmp, h5py.File(tmp, "w") as index:
        for key, value in attrs.items():
            index.attrs[key] = as_attr(value)
        write_arrays(index, arrays or {})
        group = index.create_group(FEATURES_GROUP)
        for name in sorted(links):
            group[name] = h5py.ExternalLink(links[name], f"/{FEATURES_GROUP}/{name}")
    return time.monotonic() - started
