"""Several outputs of one split run (``--shard I/N -o part-I.h5``) tied into one file users open.

The merged file is an index like any other: relative external links into the parts' own
shard folders, so no feature is copied. It is built only from what the parts published
(their shards and part files), so merging while parts are still running is safe: it is
written to a temporary file and renamed, and merging again later picks up what finished
since. The result is the same whatever order the parts are given in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from naf_cli.disk import check_output_file
from naf_cli.errors import OptionError, OutputError
from naf_cli.feature_format import plain_attr
from naf_cli.pipeline.hdf5.layout import (
    RUN_FILE,
    RunStatus,
    ShardCatalog,
    index_file,
    producer_attrs,
    read_arrays,
    read_parts,
    run_status,
    shard_folder,
    write_index,
)
from naf_cli.pipeline.resume import RunRecord, first_difference

# index attributes that describe one part's file, not the merged run
_PER_FILE = frozenset({"shard_folder", "complete", "images_total", "images_done", "images_skipped", "skipped_images",
                       "skipped_reasons",
                       "parts_total", "parts_finished", "created", "command", "merged_from", "run_id",
                       "merged_run_ids", "settings_sha256"})


@dataclass
class MergeResult:
    output: Path
    images: int
    status: RunStatus
    duplicates: int  # images found in more than one part (overlapping runs): the first part's kept
    folders: list[Path]


def shard_folder_of(part: Path) -> Path:
    """The shard folder of an output, given its index file (or the folder itself)."""
    part = Path(part)
    if part.is_dir() and (part / RUN_FILE).is_file():
        return part
    folder = shard_folder(part)
    if (folder / RUN_FILE).is_file():
        return folder
    raise OptionError(f"{part} is not an output of naf extract or naf upsample (no {folder / RUN_FILE}); fix: pass the "
                      f"-o files of the parts' runs")


def _index_contents(folder: Path) -> tuple[dict[str, object], dict[str, np.ndarray]] | None:
    """The attributes and the arrays beside the features (``--pca``'s basis) of a part's index."""
    index = index_file(folder)
    if not index.is_file():
        return None
    try:
        with h5py.File(index, "r") as handle:
            return {key: plain_attr(value) for key, value in handle.attrs.items()}, read_arrays(handle)
    except OSError:
        return None


def merge_outputs(parts: Sequence[Path], output: Path, command: str = "", overwrite: bool = False) -> MergeResult:
    """Write ``output``: one index over every image the ``parts`` (outputs of one run) published.

    Parts must share their settings (``run.json``); ``output`` may be replaced when it is an
    earlier merge (merging is idempotent) or with ``overwrite``.
    """
    output = Path(output)
    folders: list[Path] = []
    for part in parts:
        folder = shard_folder_of(part)
        if folder.resolve() not in {f.resolve() for f in folders}:
            folders.append(folder)
    if not folders:
        raise OptionError("no outputs to merge; fix: pass the -o files of the parts' runs")
    _check_output(output, folders, overwrite)
    # the run id is not compared: each part's own output has its own run (and id)
    records = [RunRecord.read(folder) for folder in folders]
    for folder, record in zip(folders, records, strict=True):
        if record is None or not record.run_id:
            raise OptionError(f"{folder} was written by an older naf-cli (format version 2); fix: merge it with the "
                              f"naf-cli that wrote it, or run its parts again with this one")
    first = records[0]
    assert first is not None
    for folder, theirs in zip(folders[1:], records[1:], strict=True):
        assert theirs is not None
        difference = first_difference(first.settings, theirs.settings)
        if difference is not None:
            raise OptionError(f"{folder} was written with {difference.key}={difference.theirs!r}, {folders[0]} with "
                              f"{difference.key}={difference.mine!r}: not parts of one run; fix: merge outputs of one command"
                              f"{difference.advice()}")
    described = next((contents for folder in folders if (contents := _index_contents(folder)) is not None), None)
    if described is None:
        raise OptionError("none of the parts has published an image yet (no index file); fix: merge once they have")
    links: dict[str, str] = {}
    duplicates = 0
    parts_states = []
    base = output.absolute().parent
    run_ids = {}
    for folder, record in zip(folders, records, strict=True):
        assert record is not None
        catalog = ShardCatalog(folder, record)
        catalog.refresh()
        run_ids[os.path.relpath(folder.absolute(), base)] = record.run_id
        for name, shard in catalog.links().items():
            if name in links:
                duplicates += 1
                continue
            links[name] = os.path.relpath((folder / shard).absolute(), base)
        parts_states.extend(read_parts(folder))
    status = run_status(parts_states, links)
    attrs = {key: value for key, value in described[0].items() if key not in _PER_FILE}
    attrs.update({
        **producer_attrs(), "command": command, "shard_folder": "", "images_done": len(links), **status.attrs(),
        "merged_from": json.dumps([os.path.relpath(folder.absolute(), base) for folder in folders]),
        "merged_run_ids": json.dumps(run_ids), "settings_sha256": first.fingerprint,
    })
    write_index(output, attrs, links, described[1])
    return MergeResult(output, len(links), status, duplicates, folders)


def _check_output(output: Path, folders: list[Path], overwrite: bool) -> None:
    check_output_file(output)
    if (shard_folder(output) / RUN_FILE).is_file():
        raise OutputError(f"{output} is the output of a run, not a merge; fix: choose another -o path for the merged file")
    if output.exists() and not overwrite:
        try:
            with h5py.File(output, "r") as handle:
                merged = "merged_from" in handle.attrs
        except OSError:
            merged = False
        if not merged:
            raise OutputError(f"{output} already exists and is not an earlier naf merge; fix: pass --overwrite or choose another -o path")
