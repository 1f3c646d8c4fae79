"""The HDF5 feature store, written so that no crash loses or corrupts finished work.

HDF5 is not journaled: a process killed mid-write can leave a file h5py cannot open. So
finished images go to *shard* files, each written as ``.partial`` and renamed when closed,
and the file users open (``-o``) is a small *index* of relative external links to them,
rewritten atomically (write a temporary file, then rename) after every shard::

    feats.h5                   index: run attributes, /features/<name> -> shard link
    feats.h5.shards/run.json   the settings of the run, checked on resume
    feats.h5.shards/shard-000000.h5 ...   /features/<name>: [C, H, W] datasets

After ``kill -9`` the index holds every image of every published shard, each complete;
the same command again skips them. docs/format.md is the reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

import naf_cli
from naf_cli.errors import OutputError, RunError
from naf_cli.feature_format import FEATURES_GROUP, FORMAT_VERSION, list_datasets
from naf_cli.pipeline.banded import BandedFeatures
from naf_cli.pipeline.sizes import chunk_shape

RUN_FILE = "run.json"
DTYPES = {"float16": np.float16, "float32": np.float32}
COMPRESSIONS = ("none", "gzip", "lzf")
# shards close after this long at least, and never more often than 20x the index rewrite
# time, so rewriting the index costs at most about 5% of the run
SHARD_SECONDS = 30.0
INDEX_OVERHEAD = 20.0


def shard_folder(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def as_attr(value: object) -> object:
    """h5py-friendly attribute: tuples become arrays, None becomes an empty string."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return np.asarray(value)
    return value


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# room kept beyond the data for HDF5's own metadata
METADATA_SLACK = 1 << 20
_KILL_COUNTS: dict[str, int] = {}


def _kill_point(event: str) -> None:
    """Test hook: ``NAF_TEST_KILL_AT=published:2`` SIGKILLs this process at the 2nd such event
    (``published``: a shard renamed and the index rewritten; ``writing``: inside a dataset write)."""
    wanted = os.environ.get("NAF_TEST_KILL_AT")
    if not wanted:
        return
    _KILL_COUNTS[event] = _KILL_COUNTS.get(event, 0) + 1
    if wanted == f"{event}:{_KILL_COUNTS[event]}":
        os.kill(os.getpid(), signal.SIGKILL)


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


class HDF5FeatureSink:
    """Writes features as shards plus an index at ``output``; resumes a run with the same settings.

    Args:
        output: the index file users open.
        overwrite: start again, deleting an existing output and its shards.
        dtype: ``float16`` (values beyond +-65504 keep float32 for that image) or ``float32``.
        compression: ``none``, ``gzip`` or ``lzf``.
        shard_images: images per shard at most (None: by time only).
        shard_seconds: a shard closes after this long at least (see ``INDEX_OVERHEAD``).

    The output path is checked on construction, before any work.
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
            raise OutputError(f"--shard-images must be at least 1, got {shard_images}")
        if self.output.is_dir():
            raise OutputError(f"-o {self.output} is a folder; fix: name an .h5 file, e.g. -o {self.output / 'features.h5'}")
        if not self.output.parent.is_dir():
            raise OutputError(f"folder {self.output.parent} does not exist; fix: create it or choose another -o path")
        if self.output.exists() and not overwrite and not (self.shards / RUN_FILE).is_file():
            raise OutputError(f"{self.output} already exists and is not a resumable naf output; "
                              f"fix: pass --overwrite or choose another -o path")
        self.overwrite = overwrite
        self.dtype = dtype
        self.compression = compression
        self.shard_images = shard_images
        self.shard_seconds = shard_seconds
        self.attrs: dict[str, object] = {}
        self.links: dict[str, str] = {}  # image name -> shard file name, for every published image
        self.total = 0
        self.skipped: list[tuple[str, str]] = []
        self._shard: h5py.File | None = None
        self._shard_path: Path | None = None
        self._shard_names: list[str] = []
        self._group_boundary = 0  # images of the current shard that belong to whole groups
        self._shard_started = 0.0
        self._next_shard = 0
        self._index_seconds = 0.0
        self._damaged = False

    # -- resume -------------------------------------------------------------------------------

    def settings(self, run_settings: Mapping[str, object]) -> dict[str, object]:
        """What must match for a rerun to continue this output."""
        return {"format_version": FORMAT_VERSION, "out_dtype": self.dtype, "compression": self.compression,
                **{k: _jsonable(v) for k, v in run_settings.items()}}

    def prepare(self, run_settings: Mapping[str, object]) -> set[str]:
        """Before any work: start a new output, or find what a previous run finished.

        Returns the names already done. Settings that differ from the previous run's are an
        OutputError naming the first difference.
        """
        wanted = self.settings(run_settings)
        run_file = self.shards / RUN_FILE
        if self.overwrite:
            self._remove_previous()
        elif run_file.is_file():
            done = self._scan_shards()
            if done:  # finished work is protected: only the same settings may add to it
                previous = json.loads(run_file.read_text())
                for key in sorted(set(wanted) | set(previous)):
                    if previous.get(key) != wanted.get(key):
                        raise OutputError(
                            f"{self.output} was written with {key}={previous.get(key)!r}, this run has "
                            f"{key}={wanted.get(key)!r}; fix: rerun with the same options to resume, or pass "
                            f"--overwrite to start again"
                        )
                return done
        self.shards.mkdir(exist_ok=True)
        tmp = run_file.with_name(RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(wanted, indent=1, sort_keys=True))
        os.replace(tmp, run_file)
        return set()

    def _remove_previous(self) -> None:
        if self.shards.is_dir():
            if not (self.shards / RUN_FILE).is_file():
                raise OutputError(f"{self.shards} exists but is not a naf shard folder; fix: move it away or choose another -o path")
            shutil.rmtree(self.shards)
        self.output.unlink(missing_ok=True)

    def _scan_shards(self) -> set[str]:
        """Published shards: their images are done. Unfinished (.partial) shards are deleted."""
        for partial in self.shards.glob("shard-*.h5.partial"):
            partial.unlink()
        numbers = []
        for shard in sorted(self.shards.glob("shard-*.h5")):
            numbers.append(int(shard.stem.split("-")[1]))
            with h5py.File(shard, "r") as handle:
                for name in list_datasets(handle[FEATURES_GROUP]):
                    self.links[name] = shard.name
        self._next_shard = max(numbers, default=-1) + 1
        return set(self.links)

    # -- writing ------------------------------------------------------------------------------

    def begin(self, attrs: Mapping[str, object], total: int = 0) -> None:
        """Remember the run's attributes for the index; ``total`` is the number of inputs."""
        self.attrs = {"format_version": FORMAT_VERSION, "producer": f"naf-cli {naf_cli.__version__}",
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "out_dtype": self.dtype, "compression": self.compression, **attrs}
        self.total = total
        if self.links:
            self._write_index(complete=False)

    def _open_shard(self) -> h5py.File:
        self._shard_path = self.shards / f"shard-{self._next_shard:06d}.h5.partial"
        self._next_shard += 1
        try:
            handle = h5py.File(self._shard_path, "w")
            handle.attrs["format_version"] = FORMAT_VERSION
            handle.create_group(FEATURES_GROUP)
        except OSError as err:
            raise RunError(f"cannot create {self._shard_path}: {err}; fix: check the space and permissions of {self.shards}") from err
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
        options: dict[str, object] = {} if self.compression == "none" else {"compression": self.compression}
        assert self._shard is not None and self._shard_path is not None
        dtype = data.dtype if isinstance(data, np.ndarray) else np.dtype(self.dtype)
        check_room(self._shard_path, int(np.prod(shape)) * dtype.itemsize, f"features of {name}")
        group = self._shard[FEATURES_GROUP]
        try:
            chunks = chunk_shape(shape[0], shape[1], shape[2], itemsize=dtype.itemsize)
            if isinstance(data, np.ndarray):
                dataset = group.create_dataset(name, data=data, chunks=chunks, **options)
            else:
                dataset = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **options)
                if not self._fill_bands(dataset, data) and dtype == np.float16:
                    # a band beyond float16's range (+-65504): this image is kept in float32
                    del group[name]
                    chunks = chunk_shape(shape[0], shape[1], shape[2], itemsize=4)
                    dataset = group.create_dataset(name, shape=shape, dtype=np.float32, chunks=chunks, **options)
                    self._fill_bands(dataset, data)
            _kill_point("writing")
            for key, value in attrs.items():
                dataset.attrs[key] = as_attr(value)
            self._shard.flush()
        except OSError as err:
            self._damaged = True
            reason = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
            raise RunError(f"cannot write features of {name} to {self._shard_path}: {reason}; fix: free disk space, then "
                           f"rerun the same command to resume") from err
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
        self.skipped.append((name, reason))

    def _close_shard(self) -> None:
        """Close the current shard and give it its final name: its images are finished."""
        if self._shard is None or self._shard_path is None:
            return
        self._shard.close()
        self._shard = None
        _fsync_path(self._shard_path)
        final = self._shard_path.with_name(self._shard_path.name.removesuffix(".partial"))
        os.replace(self._shard_path, final)
        for name in self._shard_names:
            self.links[name] = final.name

    def _publish(self) -> None:
        """Close the current shard and rewrite the index to include it."""
        if self._shard is None:
            return
        self._close_shard()
        self._write_index(complete=False)
        _kill_point("published")

    def _write_index(self, complete: bool) -> None:
        started = time.monotonic()
        tmp = self.output.with_name(f".{self.output.name}.tmp{os.getpid()}")
        check_room(tmp, 200 * len(self.links), f"the index {self.output}")
        try:
            with h5py.File(tmp, "w") as index:
                for key, value in self.attrs.items():
                    index.attrs[key] = as_attr(value)
                index.attrs["shard_folder"] = self.shards.name
                index.attrs["complete"] = complete
                index.attrs["images_total"] = self.total
                index.attrs["images_done"] = len(self.links)
                index.attrs["images_skipped"] = len(self.skipped)
                index.attrs["skipped_images"] = json.dumps([{"image": n, "reason": r} for n, r in self.skipped], ensure_ascii=False)
                group = index.create_group(FEATURES_GROUP)
                for name in sorted(self.links):
                    group[name] = h5py.ExternalLink(f"{self.shards.name}/{self.links[name]}", f"/{FEATURES_GROUP}/{name}")
            _fsync_path(tmp)
            os.replace(tmp, self.output)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            reason = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
            raise RunError(f"cannot write the index {self.output}: {reason}; fix: free disk space, then rerun the same "
                           f"command to resume (finished shards are kept)") from err
        self._index_seconds = time.monotonic() - started

    def finish(self) -> Path:
        """Publish the last shard and write the complete index."""
        self._close_shard()
        self._write_index(complete=True)
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
        if self.links:
            with contextlib.suppress(RunError):
                self._write_index(complete=False)
            return self.output
        return None


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value
