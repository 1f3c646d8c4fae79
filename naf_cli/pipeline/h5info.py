"""What an HDF5 feature file holds, as plain data (``naf info`` renders it)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from naf_cli.errors import NafError
from naf_cli.feature_format import FEATURES_GROUP, list_datasets, plain_attr

RUN_KEYS = ("format_version", "producer", "created", "command", "kind", "source_root", "out_dtype", "compression",
            "shard_folder", "merged_from")
BACKBONE_KEYS = ("backbone", "backbone_timm", "backbone_weights", "backbone_weights_sha256", "patch_size", "channels",
                 "long_side")
UPSAMPLER_KEYS = ("upsampler", "checkpoint", "checkpoint_sha256", "upsampler_settings", "output_size_mode", "scale")


def _linked_bytes(path: Path, link_files: set[str]) -> int:
    """Bytes of the index and of every file its datasets link to (shards), each counted once."""
    files = {path.resolve()} | {(path.parent / name).resolve() for name in link_files}
    return sum(f.stat().st_size for f in files if f.is_file())


def _parts(attrs: dict[str, Any]) -> dict[str, Any]:
    """The split: parts of the run and which have finished (whole runs: one part)."""
    total = int(attrs.get("parts_total", 1))
    finished = [int(i) for i in attrs.get("parts_finished", [])]
    return {"total": total, "finished": finished,
            "pending": [f"{i}/{total}" for i in range(total) if i not in finished]}


def describe_feature_file(path: Path) -> dict[str, Any]:
    """Summary of a feature file: run, backbone, upsampler, counts, skipped inputs, datasets.

    Works on any HDF5 file (missing attributes are left out); not-HDF5 is a NafError.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise NafError(f"{path} does not exist; fix: pass the .h5 file written by naf extract or naf upsample")
    if not h5py.is_hdf5(path):
        raise NafError(f"{path} is not an HDF5 file; fix: pass the .h5 file written by naf extract or naf upsample")
    with h5py.File(path, "r") as handle:
        attrs = {key: plain_attr(value) for key, value in handle.attrs.items()}
        datasets: list[dict[str, Any]] = []
        link_files: set[str] = set()
        group = handle.get(FEATURES_GROUP)
        for name in list_datasets(group) if isinstance(group, h5py.Group) else []:
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                link_files.add(link.filename)
            node = group[name]
            datasets.append({
                "name": name, "shape": list(node.shape), "dtype": str(node.dtype),
                "chunks": list(node.chunks) if node.chunks else None,
                "compression": node.compression or "none",
                "bytes_stored": int(node.id.get_storage_size()),
                "source_path": plain_attr(node.attrs.get("source_path", "")),
            })
    skipped = json.loads(attrs.get("skipped_images", "[]") or "[]")
    total = int(attrs.get("images_total", len(datasets) + len(skipped)))
    channels = Counter(d["shape"][0] for d in datasets if len(d["shape"]) == 3)
    heights = [d["shape"][-2] for d in datasets if len(d["shape"]) >= 2]
    widths = [d["shape"][-1] for d in datasets if len(d["shape"]) >= 2]
    return {
        "file": str(path),
        "size_on_disk_bytes": _linked_bytes(path, link_files),
        "complete": bool(attrs.get("complete", False)),
        "parts": _parts(attrs),
        "run": {key: attrs[key] for key in RUN_KEYS if key in attrs},
        "backbone": {key: attrs[key] for key in BACKBONE_KEYS if key in attrs},
        "upsampler": {key: attrs[key] for key in UPSAMPLER_KEYS if key in attrs},
        "images": {"done": len(datasets), "skipped": len(skipped), "pending": max(0, total - len(datasets) - len(skipped)),
                   "total": total},
        "skipped": skipped,
        "shapes": {
            "channels": sorted(channels), "dtypes": sorted({d["dtype"] for d in datasets}),
            "height_range": [min(heights), max(heights)] if heights else None,
            "width_range": [min(widths), max(widths)] if widths else None,
            "feature_bytes_stored": sum(d["bytes_stored"] for d in datasets),
        },
        "datasets": datasets,
    }
