"""What an HDF5 feature file holds, as plain data (``naf info`` renders it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from naf_cli.errors import DamagedOutput, NafError, first_line
from naf_cli.feature_format import FEATURES_GROUP, plain_attr, read_skipped
from naf_cli.pca.stored import PCA_GROUP, StoredBasis
from naf_cli.pipeline.hdf5.verify import Problem

RUN_KEYS = ("format_version", "producer", "created", "command", "kind", "source_root", "out_dtype", "compression",
            "shard_folder", "merged_from", "run_id")
BACKBONE_KEYS = ("backbone", "backbone_timm", "backbone_weights", "backbone_weights_sha256", "patch_size", "channels",
                 "long_side")
UPSAMPLER_KEYS = ("upsampler", "checkpoint", "checkpoint_sha256", "upsampler_settings", "output_size_mode", "scale")
PCA_KEYS = ("pca_components", "pca_channels", "pca_variance_kept", "pca_fit", "pca_fit_images", "pca_seed", "pca_sha256",
            "pca_basis_from")


def _linked_bytes(path: Path, link_files: set[str]) -> int:
    """Bytes of the index and of every file its datasets link to (shards), each counted once."""
    files = {path.resolve()} | {Path(name).resolve() for name in link_files}
    return sum(f.stat().st_size for f in files if f.is_file())


def _parts(attrs: dict[str, Any]) -> dict[str, Any]:
    """The split: parts of the run and which have finished (whole runs: one part)."""
    total = int(attrs.get("parts_total", 1))
    finished = [int(i) for i in attrs.get("parts_finished", [])]
    return {"total": total, "finished": finished,
            "pending": [f"{i}/{total}" for i in range(total) if i not in finished]}


def describe_feature_file(path: Path) -> dict[str, Any]:
    """Summary of a feature file: run, backbone, upsampler, counts, skipped inputs, datasets,
    and the ``problems`` that keep it from being complete (each with its fix).

    ``complete`` is true only for a naf output whose every image is present, linked to a
    shard of its own run and not recorded as damaged; None for a file another tool wrote
    with the same layout. Not HDF5, or no ``/features`` datasets of [C, h, w]: a NafError
    (exit 2); an index that cannot be opened (truncated): a DamagedOutput (exit 1).
    """
    import h5py

    from naf_cli.pipeline.hdf5.verify import find_problems, linked_images

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise NafError(f"{path} {what}; fix: pass the .h5 file written by naf extract or naf upsample")
    if not h5py.is_hdf5(path):
        raise NafError(f"{path} is not an HDF5 file; fix: pass the .h5 file written by naf extract or naf upsample")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        reason = first_line(err)
        raise DamagedOutput(f"{path} cannot be opened, it is truncated or damaged ({reason}); fix: rerun the command that "
                            f"wrote it, which rebuilds the index from its shards (or restore it from a copy)") from err
    with handle:
        attrs = {key: plain_attr(value) for key, value in handle.attrs.items()}
        images = linked_images(handle, path)
        datasets: list[dict[str, Any]] = []
        group = handle.get(FEATURES_GROUP)
        for image in images:
            if image.problem:
                datasets.append({"name": image.name, "problem": image.problem})
                continue
            node = group[image.name]
            datasets.append({
                "name": image.name, "shape": list(node.shape), "dtype": str(node.dtype),
                "chunks": list(node.chunks) if node.chunks else None,
                "compression": node.compression or "none", "checksums": bool(node.fletcher32),
                "bytes_stored": int(node.id.get_storage_size()),
                "bytes_data": int(node.size * node.dtype.itemsize),
                "source_path": plain_attr(node.attrs.get("source_path", "")),
            })
        by_naf = str(attrs.get("producer", "")).startswith("naf-cli")
        readable = [d for d in datasets if "shape" in d]
        if not by_naf and (not isinstance(group, h5py.Group) or not any(len(d["shape"]) == 3 for d in readable)):
            raise NafError(f"{path} is not a naf feature file (no /{FEATURES_GROUP} group of [C, h, w] datasets); fix: pass "
                           f"the .h5 file written by naf extract or naf upsample (docs/format.md)")
        problems = find_problems(handle, path, images) if by_naf else []
        pca = handle.get(PCA_GROUP)
        explained = StoredBasis.read(pca).explained_variance_ratio.tolist() if isinstance(pca, h5py.Group) else None
    skipped = read_skipped(attrs)
    total = int(attrs.get("images_total", len(datasets) + len(skipped)))
    pending = max(0, total - len(datasets) - len(skipped))
    parts = _parts(attrs)
    # the attribute is the writer's word; images no longer linked (damaged, missing) are pending too
    if by_naf and (not attrs.get("complete", False) or pending > 0):
        if attrs.get("complete", False) or (parts["total"] > 1 and not parts["pending"]):
            message = f"{pending} image(s) of the inputs are in no shard of the run (damaged copies, or missing shards)"
            fix = ("rerun the command that wrote it (for a split run, each part's command"
                   + (", then naf merge again)" if attrs.get("merged_from") else ")"))
        elif parts["total"] > 1:
            message = (f"{len(parts['finished'])} of {parts['total']} parts finished; waiting for {', '.join(parts['pending'])}")
            fix = "run or resume those parts (outputs of separate parts: naf merge)"
        else:
            message = f"an interrupted or unfinished run: {pending} image(s) pending"
            fix = "rerun its command (the `command` attribute) to resume"
        problems.insert(0, Problem("incomplete", message, fix))
    channels = Counter(d["shape"][0] for d in readable if len(d["shape"]) == 3)
    heights = [d["shape"][-2] for d in readable if len(d["shape"]) >= 2]
    widths = [d["shape"][-1] for d in readable if len(d["shape"]) >= 2]
    return {
        "file": str(path),
        "size_on_disk_bytes": _linked_bytes(path, {str(i.file) for i in images}),
        "complete": (not problems) if by_naf else None,
        "problems": [p.to_json() for p in problems],
        "parts": parts,
        "run": {key: attrs[key] for key in RUN_KEYS if key in attrs},
        "backbone": {key: attrs[key] for key in BACKBONE_KEYS if key in attrs},
        "upsampler": {key: attrs[key] for key in UPSAMPLER_KEYS if key in attrs},
        "pca": None if explained is None else {**{key: attrs[key] for key in PCA_KEYS if key in attrs},
                                               "explained_variance_ratio": explained},
        "images": {"done": len(readable), "unreadable": len(datasets) - len(readable), "skipped": len(skipped),
                   "pending": pending, "total": total},
        "skipped": [{"image": name, "reason": reason} for name, reason in skipped],
        "shapes": {
            "channels": sorted(channels), "dtypes": sorted({d["dtype"] for d in readable}),
            "height_range": [min(heights), max(heights)] if heights else None,
            "width_range": [min(widths), max(widths)] if widths else None,
            "feature_bytes_stored": sum(d["bytes_stored"] for d in readable),
            "feature_bytes_data": sum(d["bytes_data"] for d in readable),
        },
        "datasets": datasets,
    }
