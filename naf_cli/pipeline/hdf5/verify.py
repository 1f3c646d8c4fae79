"""Whether a feature file holds what it claims: every linked image's shard present and of its
run, nothing recorded as damaged, every chunk's checksum right (``verify``).

``naf info`` reports ``problems`` (cheap: metadata only); ``naf verify`` also reads every
chunk, so HDF5 checks each one's fletcher32 checksum, and records what it finds damaged in
the run's ``damaged.json``, which the next rerun of the run's command redoes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from naf_cli.errors import NafError, first_line
from naf_cli.feature_format import FEATURES_GROUP, list_entries, plain_attr
from naf_cli.pipeline.hdf5.layout import SHARD_FINGERPRINT, SHARD_RUN_ID, read_damaged, record_damaged, shard_owner
from naf_cli.pipeline.progress import SilentProgress
from naf_cli.pipeline.seams import Progress

RERUN = "rerun the command that wrote it (the `command` attribute; it redoes exactly the images concerned)"


@dataclass
class Problem:
    """One reason a file is not whole: what, which images (the first few named), and the fix."""

    kind: str  # separated, missing-shard, foreign-shard, unreadable, damaged, incomplete
    message: str
    fix: str
    images: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"problem": self.kind, "message": self.message, "fix": self.fix, "images": len(self.images),
                "first_images": self.images[:10]}


@dataclass
class LinkedImage:
    """One image of a feature file and where its data lives."""

    name: str
    file: Path  # the file holding the data: a shard, or the feature file itself
    problem: str = ""  # why its link cannot be followed


def linked_images(handle: h5py.File, path: Path) -> list[LinkedImage]:
    group = handle.get(FEATURES_GROUP)
    if not isinstance(group, h5py.Group):
        return []
    images = []
    for name, problem in list_entries(group):
        link = group.get(name, getlink=True)
        file = path.parent / link.filename if isinstance(link, h5py.ExternalLink) else path
        images.append(LinkedImage(name, file, problem))
    return images


def _expected_run_ids(attrs: dict[str, Any], path: Path) -> dict[Path, str]:
    """Shard folder -> the run id its shards must carry (empty: files written before run ids)."""
    if attrs.get("merged_run_ids"):
        return {(path.parent / folder).resolve(): run_id for folder, run_id in json.loads(attrs["merged_run_ids"]).items()}
    if attrs.get("run_id") and attrs.get("shard_folder"):
        return {(path.parent / str(attrs["shard_folder"])).resolve(): str(attrs["run_id"])}
    return {}


def find_problems(handle: h5py.File, path: Path, images: list[LinkedImage]) -> list[Problem]:
    """Everything wrong with the file that its metadata shows (no data is read)."""
    attrs = {key: plain_attr(value) for key, value in handle.attrs.items()}
    problems: list[Problem] = []
    folder_name = str(attrs.get("shard_folder") or "")
    missing = [image for image in images if not image.file.is_file()]
    if folder_name and not (path.parent / folder_name).is_dir() and images:
        problems.append(Problem("separated", f"the index is separated from its shards folder {path.parent / folder_name}: "
                                f"no image can be read", f"copy or move {folder_name}/ beside {path.name} (the two go "
                                f"together), or {RERUN}", [i.name for i in images]))
    elif missing:
        files = sorted({str(image.file) for image in missing})
        problems.append(Problem("missing-shard", f"{len(missing)} image(s) link to {len(files)} shard file(s) that do not "
                                f"exist (first: {files[0]})", f"restore the shard files, or {RERUN}",
                                [i.name for i in missing]))
    expected = _expected_run_ids(attrs, path)
    fingerprint = str(attrs.get("settings_sha256") or "")
    records: dict[Path, tuple[str, str]] = {}
    foreign, unreadable = [], []
    for image in images:
        if not image.file.is_file():
            continue
        if image.problem:
            unreadable.append(image)
            continue
        if image.file == path or not expected:
            continue
        if image.file not in records:
            try:
                with h5py.File(image.file, "r") as shard:
                    records[image.file] = (str(plain_attr(shard.attrs.get(SHARD_RUN_ID, ""))),
                                           str(plain_attr(shard.attrs.get(SHARD_FINGERPRINT, ""))))
            except OSError:
                records[image.file] = ("", "")
        run_id, shard_fingerprint = records[image.file]
        if run_id != expected.get(image.file.parent.resolve()) or (fingerprint and shard_fingerprint != fingerprint):
            foreign.append(image)
    if foreign:
        problems.append(Problem("foreign-shard", f"{len(foreign)} image(s) link to shard files of another run or other "
                                f"settings (first: {foreign[0].file})", f"{RERUN}; the index is rebuilt from the run's own "
                                f"shards", [i.name for i in foreign]))
    if unreadable:
        problems.append(Problem("unreadable", f"{len(unreadable)} image(s) cannot be opened (first: {unreadable[0].name}: "
                                f"{unreadable[0].problem})", f"run naf verify {path}, then {RERUN}",
                                [i.name for i in unreadable]))
    damaged = _recorded_damaged(images)
    if damaged:
        problems.append(Problem("damaged", f"{len(damaged)} image(s) were found damaged by naf verify and not redone yet "
                                f"(first: {damaged[0]})", RERUN, damaged))
    return problems


def _recorded_damaged(images: Iterable[LinkedImage]) -> list[str]:
    """Images still linked to a copy that ``damaged.json`` (beside its shard) records as damaged."""
    recorded: dict[Path, set[tuple[str, str]]] = {}
    damaged = []
    for image in images:
        folder = image.file.parent
        if folder not in recorded:
            try:
                recorded[folder] = read_damaged(folder)
            except NafError:  # an unreadable damaged.json: naf verify says so when it rewrites it
                recorded[folder] = set()
        if (image.name, image.file.name) in recorded[folder]:
            damaged.append(image.name)
    return damaged


@dataclass
class VerifyReport:
    checked: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    damaged: list[tuple[str, Path, str]] = field(default_factory=list)  # (image, file, reason)
    problems: list[Problem] = field(default_factory=list)
    not_recorded: list[str] = field(default_factory=list)  # why damaged.json could not be written


def verify(path: Path, progress: Progress | None = None) -> VerifyReport:
    """Read every chunk of every image of ``path`` (HDF5 verifies each checksum on read); record the
    damaged images beside their shards (``damaged.json``), so the next rerun redoes them."""
    started = time.perf_counter()
    report = VerifyReport()
    with h5py.File(path, "r") as handle:
        images = linked_images(handle, path)
        report.problems = [p for p in find_problems(handle, path, images) if p.kind != "damaged"]
        group = handle[FEATURES_GROUP]
        progress = progress or SilentProgress()
        progress.start(len(images), f"verifying {path.name}")
        for image in images:
            if image.problem or not image.file.is_file():
                progress.advance(image.name)
                continue
            try:
                dataset = group[image.name]
                chunks = dataset.iter_chunks() if dataset.chunks else [()]
                for selection in chunks:
                    report.bytes_read += dataset[selection].nbytes
            except (OSError, KeyError, ValueError) as err:
                reason = first_line(err)
                report.damaged.append((image.name, image.file, reason))
            report.checked += 1
            progress.advance(image.name)
        progress.close()
    report.seconds = time.perf_counter() - started
    by_folder: dict[Path, list[tuple[str, str, str]]] = {}
    for name, file, reason in report.damaged:
        if file != path:
            by_folder.setdefault(file.parent, []).append((name, file.name, reason))
    for folder, entries in by_folder.items():
        try:
            record_damaged(folder, entries)
        except NafError as err:  # read-only storage: the report still stands
            report.not_recorded.append(str(err))
    return report


def redo_hint(path: Path, damaged: list[tuple[str, Path, str]], command: str) -> str:
    """How to redo ``damaged`` images: the run's command, or each part's, then merge again for a merged file."""
    parts = sorted({owner.partition.label for _, file, _ in damaged if (owner := shard_owner(file.name)) and not owner.partition.is_whole})
    with h5py.File(path, "r") as handle:
        merged = "merged_from" in handle.attrs
    if parts:
        what = f"rerun the command of part(s) {', '.join(parts)} (their --shard I/N command or torchrun job)"
    elif merged:
        what = "rerun the command that wrote each damaged shard's output"
    else:
        what = f"rerun `{command}`"
    return what + (f", then naf merge again to write {path}" if merged else "")
