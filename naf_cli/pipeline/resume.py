"""Resuming: what a rerun must share with the run it continues, and which files it may remove.

One implementation for every place that compares runs: the HDF5 sink on every start,
``naf merge`` over the parts' folders, and the torchrun start check between ranks.

- ``run_settings`` / ``output_settings``: the settings of a run, and their ``fingerprint``,
  which every shard carries;
- ``first_difference``: the first setting two runs do not share, for the one-line refusal;
- ``join``, ``RunRecord`` and ``agree``: the folder's ``run.json`` (run id and settings),
  created by whichever process comes first, checked by every later one;
- ``remove_previous`` (``--overwrite``) and ``remove_stale``: files a starting run removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from naf_cli.disk import remove_stale_temporaries, temporary_path, write_failure, write_json_atomic
from naf_cli.errors import OutputError
from naf_cli.feature_format import FORMAT_VERSION
from naf_cli.pipeline.hdf5.layout import RUN_FILE, RUN_ID_LENGTH, ShardCatalog, part_file, read_parts, shard_owner
from naf_cli.pipeline.partition import Partition

if TYPE_CHECKING:
    from naf_cli.pipeline.seams import Transform

# attributes that name where things were read from; their content hashes are compared instead
LOCATION_KEYS = frozenset({"backbone_weights", "checkpoint", "features_from", "pca_basis_from"})


def run_settings(transform: Transform, batch_size: int = 1) -> dict[str, object]:
    """What a resumed run must share with the run it continues: the transform's settings, and
    the batch size (batched convolutions may differ from single ones in the last bits)."""
    attrs = {key: value for key, value in transform.file_attrs().items() if key not in LOCATION_KEYS}
    return {"kind": transform.kind, "batch_size": batch_size, **attrs}


def output_settings(settings: Mapping[str, object], *, out_dtype: str, compression: str) -> dict[str, object]:
    """``run_settings`` plus what the output file adds: the format version, dtype and compression."""
    return {"format_version": FORMAT_VERSION, "out_dtype": out_dtype, "compression": compression,
            **{key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}}


def fingerprint(settings: Mapping[str, object]) -> str:
    """SHA-256 of the settings as canonical JSON: what every shard of the run carries."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def new_run_id() -> str:
    return secrets.token_hex(RUN_ID_LENGTH // 2)


@dataclass(frozen=True)
class Difference:
    """The first setting two runs do not share: its key (``outer: inner`` inside nested
    mappings), and the value each side has (None where a side lacks it)."""

    key: str
    mine: object
    theirs: object

    def __str__(self) -> str:
        return f"{self.key} ({self.mine!r} vs {self.theirs!r})"

    def advice(self) -> str:
        """More to the fix when the difference has a cause of its own (empty otherwise)."""
        if self.key.endswith("checkpoint_sha256"):
            return "; the parts used other NAF weights: pass the same --checkpoint to every part (naf info names each one's)"
        if self.key.endswith("pca_sha256"):
            return ("; the same --pca options fitted different bases (machines whose arithmetic differs in the last "
                    "bits): fit it once and pass --pca-basis FILE (that output) to every part")
        return ""


def first_difference(mine: object, theirs: object, where: str = "") -> Difference | None:
    """The first key (in name order, depth first) whose values differ, or None when equal."""
    if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
        for key in sorted(set(mine) | set(theirs)):
            found = first_difference(mine.get(key), theirs.get(key), f"{where}: {key}" if where else str(key))
            if found is not None:
                return found
        return None
    return None if mine == theirs else Difference(where, mine, theirs)


@dataclass(frozen=True)
class RunRecord:
    """``run.json``: the run's id (not a setting: parts and resumes adopt it) and its settings."""

    run_id: str
    settings: Mapping[str, object]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def to_json(self) -> dict[str, object]:
        return {"run_id": self.run_id, "settings_sha256": self.fingerprint, "settings": dict(self.settings)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        settings = data.get("settings")
        if isinstance(settings, dict):
            return cls(str(data.get("run_id", "")), settings)
        return cls("", dict(data))  # format version 2 wrote the settings alone

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        """The record of ``folder/run.json``, or None when there is none."""
        path = folder / RUN_FILE
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as err:
            raise OutputError(f"{path} cannot be read ({err}); fix: delete it (the next run rebuilds it from the "
                              f"shards' own records) and rerun the same command") from err


@dataclass(frozen=True)
class Joined:
    """The run a starting process joined: its record, the images already done (by any part),
    and warnings for the user (shards in the folder that are not the run's)."""

    record: RunRecord
    done: set[str]
    notices: list[str]


def join(output: Path, catalog: ShardCatalog, settings: dict[str, object], partition: Partition, overwrite: bool) -> Joined:
    """Before any work, under the part's lock: start a new output in ``catalog``'s folder, or
    continue the run found there (settings that differ are an OutputError naming the first
    difference); then remove what no running part owns. ``overwrite`` deletes the earlier output first."""
    folder = catalog.folder
    if overwrite:
        remove_previous(output, folder)
    folder.mkdir(exist_ok=True)
    catalog.refresh()
    record = agree(output, catalog, settings, partition)
    done = set(catalog.links())
    notices = [f"warning: {folder / shard} {why}" for shard, why in catalog.foreign()]
    remove_stale(folder, partition)
    return Joined(record, done, notices)


def agree(output: Path, catalog: ShardCatalog, wanted: dict[str, object], partition: Partition) -> RunRecord:
    """The run this process joins: ``run.json``'s, created when new, checked against ``wanted``.

    A lost ``run.json`` is rebuilt from the shards' own records, never from this command's
    options. Finished work is protected: only the same settings may add to it. A whole run
    that finished nothing may replace the settings (with a new run id); parts of a split run
    never do (another part may have started with them a moment ago). ``catalog`` (of the
    shard folder, refreshed) is bound to the record it returns.
    """
    folder = catalog.folder
    recorded = RunRecord.read(folder)
    if recorded is None:
        rebuilt = [RunRecord(run_id, settings) for run_id, settings in catalog.recorded_runs()]
        recorded = _create_run_file(folder, rebuilt[0] if rebuilt else RunRecord(new_run_id(), wanted))
    difference = first_difference(wanted, recorded.settings)
    catalog.bind(recorded)
    if difference is None and recorded.run_id:
        return recorded
    older = not recorded.run_id and bool(catalog.refresh())  # shards of format version 2 hold finished work
    if not older and not catalog.links() and partition.is_whole:
        fresh = RunRecord(new_run_id(), wanted)
        write_json_atomic(folder / RUN_FILE, fresh.to_json())
        catalog.bind(fresh)
        return fresh
    if difference is None or difference.key == "format_version" or older:
        raise OutputError(f"{output} was written by another naf-cli version (format version "
                          f"{recorded.settings.get('format_version')}, this one writes {FORMAT_VERSION}); fix: finish "
                          f"it with the naf-cli that started it, or pass --overwrite to start again")
    again = ("pass --overwrite to start again" if partition.is_whole else
             f"to start again, delete {output} and {folder} (or pass --overwrite with torchrun)")
    if difference.key.startswith("pca_") and None in (difference.mine, difference.theirs):
        written = "with --pca" if difference.mine is None else "without --pca"
        raise OutputError(f"{output} was written {written}, this run is not; fix: rerun with the same --pca options to "
                          f"resume, or {again}")
    if difference.key == "checkpoint_sha256":
        used = _recorded_checkpoint(output)
        how = f"--checkpoint {used}" if used else f"the --checkpoint it used (naf info {output} names it)"
        raise OutputError(f"{output} was written with other NAF weights (sha256 {str(difference.theirs)[:12]}, this run's "
                          f"{str(difference.mine)[:12]}; --checkpoint auto picks by backbone); fix: rerun with {how} to "
                          f"resume, or {again}")
    raise OutputError(f"{output} was written with {difference.key}={difference.theirs!r}, this run has "
                      f"{difference.key}={difference.mine!r}; fix: rerun with the same options to resume, or {again}")


def _recorded_checkpoint(output: Path) -> str | None:
    """The checkpoint named in ``output``'s attributes (None when it cannot be read)."""
    import h5py

    try:
        with h5py.File(output, "r") as index:
            value = index.attrs.get("checkpoint")
    except (OSError, KeyError):
        return None
    return str(value) if value else None


def _create_run_file(folder: Path, record: RunRecord) -> RunRecord:
    """Write run.json unless another part wrote it first; returns the record that won
    (two parts starting at once agree on one file, so on one run id)."""
    run_file = folder / RUN_FILE
    text = json.dumps(record.to_json(), indent=1, sort_keys=True)
    remove_stale_temporaries(run_file)
    tmp = temporary_path(run_file)
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, run_file)  # created whole, and only if absent
            return record
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: created only if absent, then written
            try:
                with open(run_file, "x", encoding="utf-8") as handle:
                    handle.write(text)
                return record
            except FileExistsError:
                pass
    except OSError as err:
        raise write_failure(run_file, err) from err
    finally:
        tmp.unlink(missing_ok=True)
    for _ in range(100):  # the other part may still be writing it (no hard links)
        with contextlib.suppress(OutputError):
            found = RunRecord.read(folder)
            if found is not None:
                return found
        time.sleep(0.05)
    return RunRecord.read(folder) or record


def is_shard_folder(folder: Path) -> bool:
    return (folder / RUN_FILE).is_file() or any(shard_owner(path.name) for path in folder.glob("shard-*.h5"))


def remove_previous(output: Path, folder: Path) -> None:
    """Delete the output and its shard folder (``--overwrite``; in a split run, one process does it).
    The lock file stays: other runs may be waiting on it."""
    if folder.is_dir():
        if not (folder / RUN_FILE).is_file() and not any(shard_owner(p.name) for p in folder.iterdir()):
            raise OutputError(f"{folder} exists but is not a naf shard folder; fix: move it away or choose another -o path")
        shutil.rmtree(folder)
    output.unlink(missing_ok=True)


def remove_stale(folder: Path, mine: Partition) -> None:
    """Unfinished shards of this run (their images are redone) and state files that no running part owns.

    A whole run owns the folder: it removes every ``.partial`` shard and every other part
    file. A part of N removes its own unfinished shards and those of other splits (an
    earlier run with another N), never those of its sibling parts, which may be running.
    The caller holds its part's lock, so no other split is alive.
    """
    for path in folder.iterdir():
        owner = shard_owner(path.name)
        if owner is not None and owner.partial and (
                mine.is_whole or owner.partition == mine or owner.partition.count != mine.count):
            path.unlink(missing_ok=True)
    for part in read_parts(folder):
        if part.partition != mine and (mine.is_whole or part.partition.count != mine.count):
            part_file(folder, part.partition).unlink(missing_ok=True)
