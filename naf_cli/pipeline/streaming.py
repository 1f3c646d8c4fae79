"""Overlap: inputs decoded in DataLoader workers ahead of the model, outputs written by a
thread behind it, so the model is not kept waiting on disk or on JPEG decoding.

Memory stays flat whatever the number of inputs: at most ``2 x workers`` decoded images
wait for the model, and at most ``WRITE_QUEUE`` results wait for the writer.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from naf_cli.cpu_threads import usable_cpus
from naf_cli.errors import ImageReadError
from naf_cli.images import DecodedImage, read_image
from naf_cli.pipeline.feature_map import FeatureMap
from naf_cli.pipeline.seams import Sink
from naf_cli.pipeline.sources import InputItem

WRITE_QUEUE = 2
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def default_workers() -> int:
    """Decoding workers: one of the CPUs this process may use is left to the model, at most 4."""
    return max(0, min(4, usable_cpus() - 1))


@dataclass
class Decoded:
    """One input after its worker: the image and the file's hash, or why it could not be read."""

    index: int
    image: DecodedImage | None
    digest: str
    error: str
    seconds: float

    def __getstate__(self) -> dict[str, Any]:
        # leaving a worker, pixels travel as a numpy array, pickled by value: tensors would
        # travel as shared file descriptors, whose transfer breaks (with a traceback) when a
        # Ctrl-C interrupts the receiving process mid-way
        state = self.__dict__.copy()
        if self.image is not None:
            image = self.image
            state["image"] = (image.pixels.numpy(), image.bit_depth, image.exif, image.frames, image.format)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["image"] is not None:
            pixels, bit_depth, exif, frames, source_format = state["image"]
            state["image"] = DecodedImage(torch.from_numpy(pixels), bit_depth, exif, frames, source_format)
        self.__dict__.update(state)

    def pin_memory(self) -> Decoded:
        """Called by DataLoader with ``pin_memory=True``: page-locked pixels copy to a GPU asynchronously."""
        if self.image is not None:
            self.image = replace(self.image, pixels=self.image.pixels.pin_memory())
        return self


class DecodedInputs(Dataset):
    """Reads, hashes and decodes the items; a file that fails comes back as an error record."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        started = time.perf_counter()
        try:
            image, digest = read_image(self.paths[index])
        except ImageReadError as err:
            return Decoded(index, None, "", str(err), time.perf_counter() - started)
        return Decoded(index, image, digest, "", time.perf_counter() - started)


def _worker_init(worker_id: int) -> None:
    """Set up a decoding worker.

    Ctrl-C reaches the whole process group: workers leave it to the main process, which
    stops its workers itself (with SIGTERM, so that one keeps its default). And a worker
    must never outlive the main process (``kill -9``, the OOM killer): blocked writing a
    result nobody will read, it would hang on, holding memory and the terminal. On Linux
    the kernel kills it then.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the main process died before the line above took effect
        os._exit(1)


def _as_is(record: Any) -> Any:
    """DataLoader's ``collate_fn`` with ``batch_size=None``: one record, passed through."""
    return record


def decoded_inputs(items: Sequence[InputItem], workers: int, pin_memory: bool = False) -> Generator[Decoded, None, None]:
    """The items decoded in order, by ``workers`` processes ahead of the caller (0: inline)."""
    dataset = DecodedInputs([item.path for item in items])
    if workers == 0 or len(dataset) < 2:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=2,
                        pin_memory=pin_memory, worker_init_fn=_worker_init)
    running = iter(loader)
    try:
        yield from running
    finally:
        # stopped now, not whenever the iterator is collected (at exit, after the run's last line)
        shutdown = getattr(running, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del running


class BackgroundWriter:
    """Runs ``sink.write`` on a thread; the first error is raised in the caller at the next call."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seconds = 0.0
        # jobs: (name, features, attrs) to write, "group" for the end of a batch group, None to stop
        self._queue: queue.Queue[tuple[str, FeatureMap, Mapping[str, object]] | str | None] = queue.Queue(WRITE_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="naf-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is not None:
                    continue  # drain without writing after a failure
                started = time.perf_counter()
                try:
                    if job == "group":
                        self.sink.end_group()
                    else:
                        assert not isinstance(job, str)
                        self.sink.write(*job)
                except BaseException as err:  # handed to the caller
                    self._error = err
                self.seconds += time.perf_counter() - started
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, name: str, features: FeatureMap, attrs: Mapping[str, object]) -> None:
        self._raise()
        self._queue.put((name, features, attrs))

    def end_group(self) -> None:
        """Every write of the current batch group is queued (see ``HDF5FeatureSink.end_group``)."""
        self._raise()
        self._queue.put("group")

    def wait(self) -> None:
        """Return once every queued write is done; raise the first error, if any. A banded
        output is computed while it is written: waiting for it keeps the next batch from
        running beside it (the memory it was banded for is not there twice)."""
        if self._thread.is_alive():
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Finish every queued write; raise the first error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()
