"""``naf pack``: a run's index and shards copied into one self-contained HDF5 file.

The run's output is an index of external links plus a folder of shards: right for millions
of images (crash-safe, resumable, split over processes), awkward to hand on (copy the index
alone and every read fails; ``visititems`` does not follow external links). The packed file
holds the same ``/features/<name>`` paths as real datasets, the arrays beside them (``/pca``)
and the run's attributes.

Chunks are copied as stored (compressed bytes and fletcher32 checksums as the run wrote
them), one at a time, so memory stays flat whatever the size. The file is written under a
temporary name, every dataset is then read back and compared with the run's, and only then
is it renamed to its final name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from naf_cli.disk import check_output_file, check_room, replacing
from naf_cli.errors import OptionError, OutputError, RunError
from naf_cli.feature_format import FEATURES_GROUP, list_datasets, plain_attr
from naf_cli.pipeline.hdf5.layout import read_arrays, write_arrays
from naf_cli.pipeline.seams import Progress

# attributes that describe where an index's data lived: meaningless in a packed file
_INDEX_ONLY = ("shard_folder", "merged_from", "merged_run_ids")


@dataclass(frozen=True)
class PackResult:
    output: Path
    images: int
    bytes_written: int
    complete: bool | None  # None: a file naf-cli did not write, packed as it is
    left_out: list[str]  # --incomplete: images that could not be read back (damaged)


def pack(index: Path, output: Path, progress: Progress, *, incomplete: bool = False, overwrite: bool = False) -> PackResult:
    """Copy every image of the naf output ``index`` into the single file ``output`` and verify it.

    An incomplete run is refused unless ``incomplete``: its readable images are packed (a
    damaged one is left out, with a line) and the file keeps saying it is incomplete.
    ``output`` must not exist unless ``overwrite``.
    """
    from naf_cli.pipeline.hdf5.info import describe_feature_file

    index, output = Path(index), Path(output)
    summary = describe_feature_file(index)
    check_output_file(output)
    if output.resolve() == index.resolve():
        raise OptionError(f"-o {output} is the run's own index; fix: pack into another file, e.g. -o {index.stem}-packed.h5")
    if output.exists() and not overwrite:
        raise OutputError(f"{output} already exists; fix: pass --overwrite or choose another -o path")
    names = [d["name"] for d in summary["datasets"] if "shape" in d]
    if summary["complete"] is False and (not incomplete or not names):
        problem = summary["problems"][0]
        more = f", or pass --incomplete to pack the {len(names)} image(s) it holds" if names else ""
        raise OptionError(f"{index} is not complete ({problem['problem']}: {problem['message']}); fix: "
                          f"{problem['fix']}{more}")
    needed = sum(d["bytes_stored"] for d in summary["datasets"] if "shape" in d) + (1 << 20)
    _check_room(output, needed)
    check_room(output, needed, f"the packed file {output}")  # the file-size limit (ulimit -f)
    progress.start(len(names), f"packing {index.name}")
    try:
        with replacing(output) as tmp:
            with h5py.File(index, "r") as source, h5py.File(tmp, "w") as packed:
                for key, value in source.attrs.items():
                    if key not in _INDEX_ONLY:
                        packed.attrs[key] = value
                packed.attrs["packed_from"] = os.path.abspath(index)
                write_arrays(packed, read_arrays(source))
                group = packed.create_group(FEATURES_GROUP)
                for name in names:
                    _copy(source[FEATURES_GROUP][name], group, name)
                    progress.advance(name)
            left_out = _verify(index, tmp, names, incomplete)
            if left_out:
                with h5py.File(tmp, "r+") as packed:
                    for name in left_out:
                        del packed[FEATURES_GROUP][name]
                        progress.warn(f"left out {name}: it cannot be read in {index} (damaged); naf verify {index} "
                                      f"records it, and rerunning the command that wrote it redoes it")
                    packed.attrs["complete"] = False
    finally:
        progress.close()
    return PackResult(output, len(names) - len(left_out), output.stat().st_size, summary["complete"], left_out)


def _check_room(output: Path, needed: int) -> None:
    """An OutputError before any write when the packed file cannot fit on its disk (a file it
    replaces stays until the new one is whole, so it frees nothing)."""
    from naf_cli.pipeline.memory import human_bytes
    from naf_cli.pipeline.run_size import free_bytes

    free, folder = free_bytes(output)
    if needed > free:
        raise OutputError(f"the packed file {output} needs about {human_bytes(needed)}, more than the {human_bytes(free)} "
                          f"free on the disk of {folder}; fix: free disk space, or -o on another disk")


def _copy(source: h5py.Dataset, group: h5py.Group, name: str) -> None:
    """One dataset with its creation properties (chunks and every filter, as they are), its
    attributes, and its written chunks copied as stored."""
    links = h5py.h5p.create(h5py.h5p.LINK_CREATE)
    links.set_create_intermediate_group(True)  # names with folders: holiday/beach.jpg
    space = h5py.h5s.create_simple(source.shape)
    target = h5py.Dataset(h5py.h5d.create(group.id, name.encode(), source.id.get_type(), space,
                                          dcpl=source.id.get_create_plist(), lcpl=links))
    for key, value in source.attrs.items():
        target.attrs[key] = value
    if source.chunks is None:  # a contiguous dataset (another writer's): copied a band of rows at a time
        rows = max(1, (8 << 20) // max(1, source.dtype.itemsize * int(np.prod(source.shape[:1] + source.shape[2:]))))
        for r0 in range(0, source.shape[1], rows):
            target[:, r0:r0 + rows] = source[:, r0:r0 + rows]
        return
    for index in range(source.id.get_num_chunks()):  # chunks never written stay unwritten (read as the fill value)
        offset = source.id.get_chunk_info(index).chunk_offset
        mask, data = source.id.read_direct_chunk(offset)
        target.id.write_direct_chunk(offset, data, mask)


def _verify(index: Path, packed: Path, names: list[str], incomplete: bool) -> list[str]:
    """Every dataset of ``packed`` read back (its checksums checked) and equal to the run's;
    returns the images the run's copy of which cannot be read (``incomplete``: left out; else
    a RunError)."""
    damaged = []
    with h5py.File(index, "r") as source, h5py.File(packed, "r") as copy:
        for name in names:
            original, written = source[FEATURES_GROUP][name], copy[FEATURES_GROUP][name]
            selections = original.iter_chunks() if original.chunks else [()]
            for selection in selections:
                try:
                    expected = original[selection]
                except OSError as err:
                    if incomplete:
                        damaged.append(name)
                        break
                    raise RunError(f"{name} cannot be read in {index} ({plain_attr(str(err))}); fix: run naf verify "
                                   f"{index}, rerun the command that wrote it to redo damaged images, then pack again (or "
                                   f"pack without it: --incomplete)") from err
                try:
                    same = np.array_equal(expected, written[selection], equal_nan=True)
                except OSError as err:
                    raise RunError(f"the packed copy of {name} cannot be read back ({plain_attr(str(err))}); fix: check "
                                   f"the disk of {packed.parent}, then rerun naf pack") from err
                if not same:
                    raise RunError(f"the packed copy of {name} differs from {index}'s; fix: check the disk of "
                                   f"{packed.parent}, then rerun naf pack")
        if set(list_datasets(copy[FEATURES_GROUP])) != set(names):
            raise RunError(f"the packed file does not hold exactly the images of {index}; fix: rerun naf pack")
    return damaged
