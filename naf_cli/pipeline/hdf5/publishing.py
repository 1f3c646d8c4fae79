"""When finished work is published, and the index rewritten from the folder.

A shard closes (and its images become visible) at a batch group's end once it is full
(``shard_images``) or old enough; the index is rewritten after every shard, spaced out when
several parts share it. Both are timed so that rewriting the index costs at most about 5%
of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from naf_cli.pipeline.hdf5.layout import PartState, RunStatus, ShardCatalog, read_parts, run_status, write_index

# shards close after this long at least, and never more often than 20x the index rewrite
# time, so rewriting the index costs at most about 5% of the run
SHARD_SECONDS = 30.0
INDEX_OVERHEAD = 20.0
# index rewrites in a row when other parts keep publishing meanwhile (each one converges)
INDEX_ATTEMPTS = 100


@dataclass
class PublishSchedule:
    """When to close a shard and when to rewrite the index, from how long the index takes."""

    shard_images: int | None = None  # images per shard at most (None: by time only)
    shard_seconds: float = SHARD_SECONDS  # a shard stays open this long at least
    index_seconds: float = 0.0  # how long the last index rewrite took
    index_written: float = field(default=-float("inf"))  # time.monotonic() of this process's last index rewrite

    def shard_due(self, images: int, opened: float) -> bool:
        """Whether a shard of ``images`` opened at ``opened`` (monotonic) should close now."""
        full = self.shard_images is not None and images >= self.shard_images
        return full or time.monotonic() - opened >= max(self.shard_seconds, INDEX_OVERHEAD * self.index_seconds)

    def index_due(self, parts: int) -> bool:
        """Parts of a split run share one index: each rewrites it at most every ``INDEX_OVERHEAD
        x (N - 1)`` times its last rewrite took, so all N together spend about 5% of one part's
        time on it, however many parts run. A shard is safe either way: the next index written
        (by any part, at any part's end, or by a rerun) includes it."""
        return time.monotonic() - self.index_written >= INDEX_OVERHEAD * self.index_seconds * (parts - 1)

    def wrote_index(self, seconds: float) -> None:
        self.index_seconds = seconds
        self.index_written = time.monotonic()


def rewrite_index(output: Path, folder: Path, catalog: ShardCatalog, attrs: Callable[[int, RunStatus], Mapping[str, object]],
                  schedule: PublishSchedule, arrays: Mapping[str, np.ndarray] | None = None) -> RunStatus:
    """Rebuild the index from the folder: every published shard and every part's state.

    ``attrs(images_done, status)`` gives the index's attributes, ``arrays`` its datasets beside
    the features (``write_index``). Other parts may publish
    while this one writes; each part looks at the folder again after its rename and writes
    again if it changed, so the last index written holds everything published before it (no
    lock, and no message between parts). Returns the run's status as written.
    """
    status = None

    def snapshot() -> tuple[tuple[str, ...], list[PartState]]:
        return catalog.refresh(), read_parts(folder)

    for _ in range(INDEX_ATTEMPTS):
        shards, parts = snapshot()
        links = catalog.links()
        status = run_status(parts, links)
        targets = {name: f"{folder.name}/{shard}" for name, shard in links.items()}
        schedule.wrote_index(write_index(output, attrs(len(links), status), targets, arrays))
        if snapshot() == (shards, parts):
            break
    assert status is not None
    return status
