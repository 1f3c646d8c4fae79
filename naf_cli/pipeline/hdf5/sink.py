"""The HDF5 feature store, written so that no crash loses or corrupts finished work.

HDF5 is not journaled: a process killed mid-write can leave a file h5py cannot open. So
finished images go to *shard* files, each written as ``.partial`` and renamed when closed,
and the file users open (``-o``) is a small *index* of relative external links to them,
rewritten atomically (write a temporary file, then rename) after every shard::

    feats.h5                   index: run attributes, /features/<name> -> shard link
    feats.h5.lock              one writer per part (``hdf5.lock``)
    feats.h5.shards/run.json   the run's id and settings, checked on resume
    feats.h5.shards/shard-<id>-000000.h5 ...   /features/<name>: [C, H, W] datasets, checksummed

After ``kill -9`` the index holds every image of every published shard, each complete;
the same command again skips them (the open shard's images are redone). A run split over processes (``--shard I/N``, torchrun)
writes one folder: each part its own shards and a ``part-<I>of<N>.json`` state file, and
every part rebuilds the index from the folder (``hdf5.layout``). docs/format.md is the
reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from naf_cli.disk import (
    check_output_file,
    check_room,
    fsync_path,
    write_failure,
)
from naf_cli.errors import NafError, OutputError
from naf_cli.feature_format import FEATURES_GROUP, FORMAT_VERSION, as_attr
from naf_cli.pipeline.feature_map import FeatureMap
from naf_cli.pipeline.hdf5.kill_points import kill_point
from naf_cli.pipeline.hdf5.layout import (
    SHARD_FINGERPRINT,
    SHARD_RUN_ID,
    SHARD_SETTINGS,
    PartState,
    RunStatus,
    ShardCatalog,
    inputs_digest,
    producer_attrs,
    shard_file_name,
    shard_folder,
    shard_owner,
    write_arrays,
)
from naf_cli.pipeline.hdf5.lock import RunLock
from naf_cli.pipeline.hdf5.publishing import SHARD_SECONDS, PublishSchedule, rewrite_index
from naf_cli.pipeline.hdf5.storage import check_storage
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.resume import RunRecord, is_shard_folder, join, output_settings
from naf_cli.pipeline.sizes import chunk_shape, stored_bytes


class HDF5FeatureSink:
    """Writes features as shards plus an index at ``output``; resumes a run with the same settings.

    Args:
        output: the index file users open.
        overwrite: start again, deleting an existing output and its shards.
        dtype: ``float16`` (values beyond +-65504 keep float32 for that image) or ``float32``.
        compression: ``none``, ``gzip`` or ``lzf``.
        shard_images: images per shard at most (None: by time only).
        shard_seconds: a shard closes after this long at least (``publishing``).

    The output path is checked on construction, before any work. ``prepare`` says which
    part of a split run this process writes; ``status`` is the whole run's state as of the
    last index written. This class runs the shards' lifecycle and writes the datasets; the
    resume policy is ``naf_cli.pipeline.resume``, the file names and the index
    ``layout``, when to publish ``publishing``.
    """

    def __init__(
        self, output: Path, overwrite: bool = False, dtype: str = "float16", compression: str = "none",
        shard_images: int | None = None, shard_seconds: float = SHARD_SECONDS,
    ) -> None:
        self.output = Path(output)
        self.shards = shard_folder(self.output)
        check_storage(dtype, compression, shard_images)
        check_output_file(self.output)
        if self.output.exists() and not overwrite and not is_shard_folder(self.shards):
            raise OutputError(f"{self.output} already exists and is not a resumable naf output; "
                              f"fix: pass --overwrite or choose another -o path")
        self.overwrite = overwrite
        self.dtype = dtype
        self.compression = compression
        self.schedule = PublishSchedule(shard_images, shard_seconds)
        self.partition = Partition()
        self.catalog = ShardCatalog(self.shards)
        self.record: RunRecord | None = None
        self.status: RunStatus | None = None
        self.notices: list[str] = []  # warnings for the user, found by ``prepare``
        self._lock: RunLock | None = None
        self.attrs: dict[str, object] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self._part = PartState(self.partition)
        self._shard: h5py.File | None = None
        self._shard_path: Path | None = None
        self._shard_names: list[str] = []
        self._group_boundary = 0  # images of the current shard that belong to whole groups
        self._shard_started = 0.0
        self._next_shard = 0
        self._damaged = False

    # -- resume -------------------------------------------------------------------------------

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
            wanted = output_settings(run_settings, out_dtype=self.dtype, compression=self.compression)
            joined = join(self.output, self.catalog, wanted, partition, self.overwrite)
        except BaseException:
            self.release()
            raise
        self.record = joined.record
        self.notices.extend(joined.notices)
        if joined.done:
            self.notices.append(f"resuming {self.output}: {len(joined.done)} image(s) already done are not redone")
        own = [owner.number for path in self.shards.glob("shard-*.h5")
               if (owner := shard_owner(path.name)) is not None and owner.partition == partition and owner.run_id == self.record.run_id]
        self._next_shard = max(own, default=-1) + 1
        return joined.done

    # -- writing ------------------------------------------------------------------------------

    def begin(self, attrs: Mapping[str, object], names: Sequence[str] = (), arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Remember the run's attributes for the index; ``names`` are every input of the whole run
        (each part lists them all; parts that list different inputs cannot complete the run);
        ``arrays`` (path -> small array, e.g. ``pca/mean``) go in every shard and the index."""
        self.arrays = dict(arrays or {})
        self.attrs = {"format_version": FORMAT_VERSION, **producer_attrs(self._created_by_run()),
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
            write_arrays(handle, self.arrays)
        except OSError as err:
            raise write_failure(self._shard_path, err) from err
        self._shard_started = time.monotonic()
        self._shard_names = []
        self._group_boundary = 0
        return handle

    def write(self, name: str, features: FeatureMap, attrs: Mapping[str, object]) -> None:
        """Store features [C, H, W] under ``features/<name>`` in the current shard; a banded
        map is computed and written a band of rows at a time."""
        if self._shard is None:
            self._shard = self._open_shard()
        if features.whole is None:
            self._write(name, attrs, features.shape, features)
            return
        whole = features.whole.detach().to("cpu")
        array = whole.to(torch.float16 if self.dtype == "float16" else torch.float32).numpy()
        if not np.isfinite(array).all() and torch.isfinite(whole).all():
            # values beyond float16's range (+-65504) would become inf: keep this image in float32
            array = whole.float().numpy()
        self._write(name, attrs, tuple(array.shape), array)

    def _write(self, name: str, attrs: Mapping[str, object], shape: tuple[int, ...], data: np.ndarray | FeatureMap) -> None:
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
            kill_point("writing")
            for key, value in attrs.items():
                dataset.attrs[key] = as_attr(value)
            self._shard.flush()
        except OSError as err:
            self._damaged = True
            raise write_failure(self._shard_path, err) from err
        self._shard_names.append(name)

    @staticmethod
    def _fill_bands(dataset: h5py.Dataset, banded: FeatureMap) -> bool:
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
        if self.schedule.shard_due(len(self._shard_names), self._shard_started):
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
        """Close the current shard and rewrite the index to include it (when due: ``PublishSchedule.index_due``)."""
        if self._shard is None:
            return
        self._close_shard()
        self._part.write(self.shards)
        if self.schedule.index_due(self.partition.count):
            self._write_index()
        kill_point("published")

    def _write_index(self) -> None:
        record = self.record
        assert record is not None

        def attrs(images_done: int, status: RunStatus) -> dict[str, object]:
            return {**self.attrs, "shard_folder": self.shards.name, "run_id": record.run_id,
                    "settings_sha256": record.fingerprint, "images_done": images_done, **status.attrs()}

        self.status = rewrite_index(self.output, self.shards, self.catalog, attrs, self.schedule, self.arrays)

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
