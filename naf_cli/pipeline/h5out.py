"""The HDF5 feature store, written so that no crash loses or corrupts finished work.

HDF5 is not journaled: a process killed mid-write can leave a file h5py cannot open. So
finished images go to *shard* files, each written as ``.partial`` and renamed when closed,
and the file users open (``-o``) is a small *index* of relative external links to them,
rewritten atomically (write a temporary file, then rename) after every shard::

    feats.h5                   index: run attributes, /features/<name> -> shard link
    feats.h5.lock              one writer per part (``run_lock``)
    feats.h5.shards/run.json   the run's id and settings, checked on resume
    feats.h5.shards/shard-<id>-000000.h5 ...   /features/<name>: [C, H, W] datasets, checksummed

After ``kill -9`` the index holds every image of every published shard, each complete;
the same command again skips them (the open shard's images are redone). A run split over processes (``--shard I/N``, torchrun)
writes one folder: each part its own shards and a ``part-<I>of<N>.json`` state file, and
every part rebuilds the index from the folder (``shard_catalog``). docs/format.md is the
reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

import naf_cli
from naf_cli.disk import (
    check_output_file,
    check_room,
    fsync_path,
    remove_stale_temporaries,
    temporary_path,
    write_failure,
    write_json_atomic,
)
from naf_cli.errors import NafError, OutputError
from naf_cli.feature_format import FEATURES_GROUP, FORMAT_VERSION, as_attr
from naf_cli.pipeline.banded import BandedFeatures
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.run_lock import RunLock
from naf_cli.pipeline.shard_catalog import (
    RUN_FILE,
    SHARD_FINGERPRINT,
    SHARD_RUN_ID,
    SHARD_SETTINGS,
    PartState,
    RunRecord,
    RunStatus,
    ShardCatalog,
    first_difference,
    inputs_digest,
    new_run_id,
    part_file,
    read_parts,
    run_status,
    shard_file_name,
    shard_owner,
    write_index,
)
from naf_cli.pipeline.sizes import chunk_shape, stored_bytes

DTYPES = {"float16": np.float16, "float32": np.float32}
COMPRESSIONS = ("none", "gzip", "lzf")
# shards close after this long at least, and never more often than 20x the index rewrite
# time, so rewriting the index costs at most about 5% of the run
SHARD_SECONDS = 30.0
INDEX_OVERHEAD = 20.0
# index rewrites in a row when other parts keep publishing meanwhile (each one converges)
INDEX_ATTEMPTS = 100


def shard_folder(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


_KILL_COUNTS: dict[str, int] = {}


def _kill_point(event: str) -> None:
    """Test hook: ``NAF_TEST_KILL_AT=published:2`` SIGKILLs this process at the 2nd such event
    (``published``: a shard renamed and the index rewritten; ``writing``: inside a dataset write);
    ``published:1@1`` only in the process whose ``RANK`` (torchrun) is 1."""
    wanted = os.environ.get("NAF_TEST_KILL_AT")
    if not wanted:
        return
    wanted, _, rank = wanted.partition("@")
    if rank and os.environ.get("RANK") != rank:
        return
    _KILL_COUNTS[event] = _KILL_COUNTS.get(event, 0) + 1
    if wanted == f"{event}:{_KILL_COUNTS[event]}":
        os.kill(os.getpid(), signal.SIGKILL)


class HDF5FeatureSink:
    """Writes features as shards plus an index at ``output``; resumes a run with the same settings.

    Args:
        output: the index file users open.
        overwrite: start again, deleting an existing output and its shards.
        dtype: ``float16`` (values beyond +-65504 keep float32 for that image) or ``float32``.
        compression: ``none``, ``gzip`` or ``lzf``.
        shard_images: images per shard at most (None: by time only).
        shard_seconds: a shard closes after this long at least (see ``INDEX_OVERHEAD``).

    The output path is checked on construction, before any work. ``prepare`` says which
    part of a split run this process writes; ``status`` is the whole run's state as of the
    last index written.
    """

    def __init__(
        self, output: Path, overwrite: bool = False, dtype: str = "float16", compression: str = "none",
        shard_images: int | None = None, shard_seconds: float = SHARD_SECONDS,
    ) -> None:
        self.output = Path(output)
        self.shards = shard_folder(self.output)
        if dtype not in DTYPES:
            raise OutputError(f"unknown --out-dtype {dtype}; fix: use float16 or float32")
        if compression not in COMPRESSIONS:
            raise OutputError(f"unknown --compression {compression}; fix: use none, gzip or lzf")
        if shard_images is not None and shard_images < 1:
            raise OutputError(f"--shard-images must be at least 1, got {shard_images}; fix: e.g. --shard-images 100, or "
                              f"leave it out (a shard every 30 s)")
        check_output_file(self.output)
        resumable = (self.shards / RUN_FILE).is_file() or any(shard_owner(p.name) for p in self.shards.glob("shard-*.h5"))
        if self.output.exists() and not overwrite and not resumable:
            raise OutputError(f"{self.output} already exists and is not a resumable naf output; "
                              f"fix: pass --overwrite or choose another -o path")
        self.overwrite = overwrite
        self.dtype = dtype
        self.compression = compression
        self.shard_images = shard_images
        self.shard_seconds = shard_seconds
        self.partition = Partition()
        self.catalog = ShardCatalog(self.shards)
        self.record: RunRecord | None = None
        self.status: RunStatus | None = None
        self.notices: list[str] = []  # warnings for the user, found by ``prepare``
        self._lock: RunLock | None = None
        self.attrs: dict[str, object] = {}
        self._part = PartState(self.partition)
        self._shard: h5py.File | None = None
        self._shard_path: Path | None = None
        self._shard_names: list[str] = []
        self._group_boundary = 0  # images of the current shard that belong to whole groups
        self._shard_started = 0.0
        self._next_shard = 0
        self._index_seconds = 0.0
        self._index_written = -float("inf")  # time.monotonic() of this process's last index write
        self._damaged = False

    # -- resume -------------------------------------------------------------------------------

    def settings(self, run_settings: Mapping[str, object]) -> dict[str, object]:
        """What must match for a rerun to continue this output."""
        return {"format_version": FORMAT_VERSION, "out_dtype": self.dtype, "compression": self.compression,
                **{k: _jsonable(v) for k, v in run_settings.items()}}

    def claim(self, partition: Partition = Partition()) -> None:
        """Take this part's lock on the output (``RunLock``) before anything in its folder is read,
        created or deleted; an OutputError when another live run holds it. Idempotent."""
        if self._lock is not None:
            return
        self._lock = RunLock.acquire(self.output, partition)
        if self._lock.unsupported:
            self.notices.append(f"warning: the file system of {self.output.parent} keeps no file locks, so two runs on "
                                f"{self.output} at once would not be detected; start one run per output")

    def release(self) -> None:
        """Give the lock back (after ``finish`` or ``abort``, or when a run stops before its work)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def prepare(self, run_settings: Mapping[str, object], partition: Partition = Partition()) -> set[str]:
        """Before any work: start a new output, or find what earlier runs finished.

        ``partition`` is the part of a split run this process writes (the whole run by
        default). Returns the names already done, by any part. Settings that differ from
        the output's are an OutputError naming the first difference. The part's lock is
        taken first and held until ``finish`` or ``abort``.
        """
        self.partition = partition
        self._part = PartState(partition)
        self.claim(partition)
        try:
            if self.overwrite:
                self.remove_previous()
            self.shards.mkdir(exist_ok=True)
            self.catalog.refresh()
            self.record = self._agree_settings(self.settings(run_settings))
            self.catalog.bind(self.record)
            done = set(self.catalog.links())
            for shard, why in self.catalog.foreign():
                self.notices.append(f"warning: {self.shards / shard} {why}")
            self._remove_stale()
        except BaseException:
            self.release()
            raise
        own = [owner.number for path in self.shards.glob("shard-*.h5")
               if (owner := shard_owner(path.name)) is not None and owner.partition == partition and owner.run_id == self.record.run_id]
        self._next_shard = max(own, default=-1) + 1
        return done

    def _agree_settings(self, wanted: dict[str, object]) -> RunRecord:
        """The run this process joins: ``run.json``'s, created when new, checked against ``wanted``.

        A lost ``run.json`` is rebuilt from the shards' own records, never from this
        command's options. Finished work is protected: only the same settings may add to it.
        A whole run that finished nothing may replace the settings (with a new run id);
        parts of a split run never do (another part may have started with them a moment ago).
        """
        recorded = RunRecord.read(self.shards)
        if recorded is None:
            rebuilt = self.catalog.recorded_runs()
            recorded = self._create_run_file(rebuilt[0] if rebuilt else RunRecord(new_run_id(), wanted))
        key = first_difference(wanted, recorded.settings)
        if key is None and recorded.run_id:
            return recorded
        self.catalog.bind(recorded)
        older = not recorded.run_id and bool(self.catalog.refresh())  # shards of format version 2 hold finished work
        if not older and not self.catalog.links() and self.partition.is_whole:
            fresh = RunRecord(new_run_id(), wanted)
            write_json_atomic(self.shards / RUN_FILE, fresh.to_json())
            return fresh
        if key == "format_version" or older or key is None:
            raise OutputError(f"{self.output} was written by another naf-cli version (format version "
                              f"{recorded.settings.get('format_version')}, this one writes {FORMAT_VERSION}); fix: finish "
                              f"it with the naf-cli that started it, or pass --overwrite to start again")
        again = ("pass --overwrite to start again" if self.partition.is_whole else
                 f"to start again, delete {self.output} and {self.shards} (or pass --overwrite with torchrun)")
        raise OutputError(f"{self.output} was written with {key}={recorded.settings.get(key)!r}, this run has "
                          f"{key}={wanted.get(key)!r}; fix: rerun with the same options to resume, or {again}")

    def _create_run_file(self, record: RunRecord) -> RunRecord:
        """Write run.json unless another part wrote it first; returns the record that won
        (two parts starting at once agree on one file, so on one run id)."""
        run_file = self.shards / RUN_FILE
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
                found = RunRecord.read(self.shards)
                if found is not None:
                    return found
            time.sleep(0.05)
        return RunRecord.read(self.shards) or record

    def remove_previous(self) -> None:
        """Delete the output and its shard folder (``--overwrite``; in a split run, one process does it).
        The lock file stays: other runs may be waiting on it."""
        if self.shards.is_dir():
            if not (self.shards / RUN_FILE).is_file() and not any(shard_owner(p.name) for p in self.shards.iterdir()):
                raise OutputError(f"{self.shards} exists but is not a naf shard folder; fix: move it away or choose another -o path")
            shutil.rmtree(self.shards)
        self.output.unlink(missing_ok=True)

    def _remove_stale(self) -> None:
        """Unfinished shards of this run (their images are redone) and state files that no running part owns.

        A whole run owns the folder: it removes every ``.partial`` shard and every other part
        file. A part of N removes its own unfinished shards and those of other splits (an
        earlier run with another N), never those of its sibling parts, which may be running.
        The lock guarantees no other split is alive.
        """
        mine = self.partition
        for path in self.shards.iterdir():
            owner = shard_owner(path.name)
            if owner is not None and owner.partial and (
                    mine.is_whole or owner.partition == mine or owner.partition.count != mine.count):
                path.unlink(missing_ok=True)
        for part in read_parts(self.shards):
            if part.partition != mine and (mine.is_whole or part.partition.count != mine.count):
                part_file(self.shards, part.partition).unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------------

    def begin(self, attrs: Mapping[str, object], names: Sequence[str] = ()) -> None:
        """Remember the run's attributes for the index; ``names`` are every input of the whole run
        (each part lists them all; parts that list different inputs cannot complete the run)."""
        created = self._created_by_run() or datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.attrs = {"format_version": FORMAT_VERSION, "producer": f"naf-cli {naf_cli.__version__}", "created": created,
                      "out_dtype": self.dtype, "compression": self.compression, **attrs}
        self._part = PartState(self.partition, False, len(names), inputs_digest(names))
        self._part.write(self.shards)
        if self.catalog.links():
            self._write_index()

    def _created_by_run(self) -> str | None:
        """When this run first started, as its index says (a resume keeps it), if the index is its own."""
        if self.record is None or not self.output.is_file():
            return None
        try:
            with h5py.File(self.output, "r") as index:
                if str(index.attrs.get("run_id", "")) == self.record.run_id:
                    return str(index.attrs["created"])
        except (OSError, KeyError):
            pass
        return None

    def _open_shard(self) -> h5py.File:
        assert self.record is not None, "prepare() first"
        self._shard_path = self.shards / (shard_file_name(self.record.run_id, self.partition, self._next_shard) + ".partial")
        self._next_shard += 1
        try:
            handle = h5py.File(self._shard_path, "w")
            handle.attrs["format_version"] = FORMAT_VERSION
            # the shard's own record of its run: never linked into another run, and a lost run.json is rebuilt from it
            handle.attrs[SHARD_RUN_ID] = self.record.run_id
            handle.attrs[SHARD_FINGERPRINT] = self.record.fingerprint
            handle.attrs[SHARD_SETTINGS] = json.dumps(dict(self.record.settings), sort_keys=True)
            handle.create_group(FEATURES_GROUP)
        except OSError as err:
            raise write_failure(self._shard_path, err) from err
        self._shard_started = time.monotonic()
        self._shard_names = []
        self._group_boundary = 0
        return handle

    def write(self, name: str, features: torch.Tensor | BandedFeatures, attrs: Mapping[str, object]) -> None:
        """Store features [C, H, W] under ``features/<name>`` in the current shard; a
        ``BandedFeatures`` is computed and written a band of rows at a time."""
        if self._shard is None:
            self._shard = self._open_shard()
        if isinstance(features, BandedFeatures):
            self._write(name, attrs, features.shape, features)
            return
        features = features.detach().to("cpu")
        array = features.to(torch.float16 if self.dtype == "float16" else torch.float32).numpy()
        if not np.isfinite(array).all() and torch.isfinite(features).all():
            # values beyond float16's range (+-65504) would become inf: keep this image in float32
            array = features.float().numpy()
        self._write(name, attrs, tuple(array.shape), array)

    def _write(self, name: str, attrs: Mapping[str, object], shape: tuple[int, ...], data: np.ndarray | BandedFeatures) -> None:
        # fletcher32: every chunk carries a checksum that every HDF5 reader verifies, so a flipped
        # byte on disk is a read error, never a wrong value
        options: dict[str, object] = {"fletcher32": True}
        if self.compression != "none":
            options["compression"] = self.compression
        assert self._shard is not None and self._shard_path is not None
        dtype = data.dtype if isinstance(data, np.ndarray) else np.dtype(self.dtype)
        chunks = chunk_shape(shape[0], shape[1], shape[2], itemsize=dtype.itemsize)
        check_room(self._shard_path, stored_bytes(shape, chunks, dtype.itemsize), f"features of {name}")
        group = self._shard[FEATURES_GROUP]
        try:
            if isinstance(data, np.ndarray):
                dataset = group.create_dataset(name, data=data, chunks=chunks, **options)
            else:
                dataset = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **options)
                if not self._fill_bands(dataset, data) and dtype == np.float16:
                    # a band beyond float16's range (+-65504): this image is kept in float32
                    del group[name]
                    chunks = chunk_shape(shape[0], shape[1], shape[2], itemsize=4)
                    check_room(self._shard_path, stored_bytes(shape, chunks, 4), f"features of {name}")
                    dataset = group.create_dataset(name, shape=shape, dtype=np.float32, chunks=chunks, **options)
                    self._fill_bands(dataset, data)
            _kill_point("writing")
            for key, value in attrs.items():
                dataset.attrs[key] = as_attr(value)
            self._shard.flush()
        except OSError as err:
            self._damaged = True
            raise write_failure(self._shard_path, err) from err
        self._shard_names.append(name)

    @staticmethod
    def _fill_bands(dataset: h5py.Dataset, banded: BandedFeatures) -> bool:
        """Write every band into ``dataset``; False as soon as one does not fit its dtype."""
        for r0, r1, rows in banded.bands():
            with np.errstate(over="ignore"):  # an overflow is caught just below
                array = rows.numpy().astype(dataset.dtype)
            if not np.isfinite(array).all() and torch.isfinite(rows).all():
                return False
            dataset[:, r0:r1, :] = array
        return True

    def end_group(self) -> None:
        """The images written so far form whole batches; publish the shard if it is full or due.

        Shards close only here, so a shard never holds part of a batch: a resumed run then
        batches the remaining images exactly as an uninterrupted run would.
        """
        self._group_boundary = len(self._shard_names)
        if self._shard is None:
            return
        full = self.shard_images is not None and len(self._shard_names) >= self.shard_images
        due = time.monotonic() - self._shard_started >= max(self.shard_seconds, INDEX_OVERHEAD * self._index_seconds)
        if full or due:
            self._publish()

    def record_skip(self, name: str, reason: str) -> None:
        self._part.skipped.append((name, reason))

    def _close_shard(self) -> None:
        """Close the current shard and give it its final name: its images are finished."""
        if self._shard is None or self._shard_path is None:
            return
        self._shard.close()
        self._shard = None
        fsync_path(self._shard_path)
        final = self._shard_path.with_name(self._shard_path.name.removesuffix(".partial"))
        os.replace(self._shard_path, final)
        self.catalog.add(final.name, self._shard_names)

    def _publish(self) -> None:
        """Close the current shard and rewrite the index to include it.

        Parts of a split run share one index: each rewrites it at most every
        ``INDEX_OVERHEAD x N`` times its last write took, so all N together spend about 5% of
        one part's time on it, however many parts run. The shard itself is safe either way:
        the next index written (by any part, at any part's end, or by a rerun) includes it.
        """
        if self._shard is None:
            return
        self._close_shard()
        self._part.write(self.shards)
        spacing = INDEX_OVERHEAD * self._index_seconds * (self.partition.count - 1)
        if time.monotonic() - self._index_written >= spacing:
            self._write_index()
        _kill_point("published")

    def _snapshot(self) -> tuple[tuple[str, ...], list[PartState]]:
        return self.catalog.refresh(), read_parts(self.shards)

    def _write_index(self) -> None:
        """Rebuild the index from the folder: every published shard and every part's state.

        Other parts may publish while this one writes; each part looks at the folder again
        after its rename and writes again if it changed, so the last index written holds
        everything published before it (no lock, and no message between parts).
        """
        for _ in range(INDEX_ATTEMPTS):
            shards, parts = self._snapshot()
            links = self.catalog.links()
            status = run_status(parts, links)
            assert self.record is not None
            attrs = {**self.attrs, "shard_folder": self.shards.name, "run_id": self.record.run_id,
                     "settings_sha256": self.record.fingerprint, "images_done": len(links), **status.attrs()}
            targets = {name: f"{self.shards.name}/{shard}" for name, shard in links.items()}
            self._index_seconds = write_index(self.output, attrs, targets)
            self._index_written = time.monotonic()
            self.status = status
            if self._snapshot() == (shards, parts):
                return

    def finish(self) -> Path:
        """Publish the last shard, mark this part finished and write the index."""
        try:
            self._close_shard()
            self._part.finished = True
            self._part.write(self.shards)
            self._write_index()
        finally:
            self.release()
        return self.output

    def abort(self) -> Path | None:
        """After an interruption or a failure: publish what is consistent, keep the run resumable.

        Returns the index path when it holds finished images, else None.
        """
        if self._shard is not None:
            if self._damaged or not self._shard_names:
                # a failed write may have left the shard inconsistent: its images are redone
                with contextlib.suppress(Exception):
                    self._shard.close()
                self._shard = None
                if self._shard_path is not None:
                    self._shard_path.unlink(missing_ok=True)
            else:
                with contextlib.suppress(Exception):
                    # images past the last whole batch are dropped: they are redone with their batch
                    for name in self._shard_names[self._group_boundary:]:
                        del self._shard[FEATURES_GROUP][name]
                    del self._shard_names[self._group_boundary:]
                    if self._shard_names:
                        self._close_shard()
                    else:
                        self._shard.close()
                        self._shard = None
                        if self._shard_path is not None:
                            self._shard_path.unlink(missing_ok=True)
        try:
            if self.record is None:  # stopped before prepare: nothing of this run exists
                return None
            with contextlib.suppress(NafError, OSError):  # the error that stopped the run is the one to tell
                self._part.write(self.shards)
            if self.catalog.links():
                with contextlib.suppress(NafError, OSError):
                    self._write_index()
                return self.output
            return None
        finally:
            self.release()


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value
