"""Store small or store full: disk per image and DataLoader throughput of the three ways to
keep upsampled features for training.

- ``full``: ``naf upsample`` (every channel at full resolution), read with ``FeatureDataset``;
- ``pca``: ``naf upsample --pca K``, read with ``FeatureDataset`` (K channels) and with
  ``FeatureFile.reconstruct`` (back to C channels);
- ``upsample-on-read``: ``naf extract`` (low resolution), upsampled in the loader by
  ``UpsamplingDataset`` (NAF, the same output size).

Each is read through a ``DataLoader`` with 0 and with ``--workers`` worker processes, one
image per item, every item touched (summed) so nothing is skipped; rounds are interleaved
and the median kept. Reads of stored maps come from the page cache unless the script may
drop it (root on Linux: ``--cold``), so the "full" rows are the best a local SSD can do.

    python benchmarks/bench_storage.py [--photos DIR] [--images 12] [--pca 32] [--workers 2] [--rounds 3] [--cold] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
NAF = [sys.executable, "-m", "naf_cli"]


def run(*args: str) -> None:
    result = subprocess.run([*NAF, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"naf {' '.join(args)} failed:\n{result.stderr}")


def stored_per_image(path: Path) -> float:
    """Bytes on disk per image: the index and every shard, over the images."""
    info = json.loads(subprocess.run([*NAF, "info", str(path), "--json"], capture_output=True, text=True).stdout)
    return info["size_on_disk_bytes"] / max(1, info["images"]["done"])


class Reconstructed(Dataset):
    """``--pca`` features brought back to their C channels when read."""

    def __init__(self, path: Path) -> None:
        from naf_cli.features import FeatureFile

        self.file = FeatureFile(path)
        self.names = list(self.file)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        return {"name": name, "features": torch.from_numpy(self.file.reconstruct(name))}


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def epoch(dataset: Dataset, workers: int, cold: bool) -> float:
    """Seconds to read every item once (after dropping the page cache with ``cold``)."""
    if cold:
        drop_page_cache()
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False)
    started = time.perf_counter()
    total = 0.0
    for item in loader:
        total += float(item["features"].float().sum())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "photos" / "train")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--vfm", default="effnet-lite0")
    parser.add_argument("--scale", type=float, default=16)
    parser.add_argument("--pca", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each read (root only)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    from naf_cli.datasets import FeatureDataset, UpsamplingDataset
    from naf_cli.pipeline.sizes import OutputSize

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.images]
    cold = args.cold and drop_page_cache()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for photo in photos:
            (folder / photo.name).symlink_to(photo.resolve())
        common = ["--vfm", args.vfm, "--device", "cpu", str(folder)]
        files = {"full": Path(tmp) / "full.h5", "pca": Path(tmp) / "pca.h5", "low": Path(tmp) / "low.h5"}
        run("upsample", *common, "--scale", str(args.scale), "-o", str(files["full"]))
        run("upsample", *common, "--scale", str(args.scale), "--pca", str(args.pca), "-o", str(files["pca"]))
        run("extract", *common, "-o", str(files["low"]))
        datasets = {
            "full (FeatureDataset)": (FeatureDataset(files["full"]), files["full"]),
            f"pca {args.pca} (FeatureDataset, {args.pca} channels)": (FeatureDataset(files["pca"]), files["pca"]),
            f"pca {args.pca} (reconstructed to all channels)": (Reconstructed(files["pca"]), files["pca"]),
            "upsample on read (UpsamplingDataset, NAF)": (UpsamplingDataset(files["low"], output_size=OutputSize("grid", args.scale)),
                                                          files["low"]),
        }
        seconds: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for label, (dataset, _) in datasets.items():
                for workers in (0, args.workers):
                    seconds.setdefault((label, workers), []).append(epoch(dataset, workers, cold))
        rows = []
        for label, (dataset, path) in datasets.items():
            for workers in (0, args.workers):
                median = statistics.median(seconds[(label, workers)])
                rows.append({"method": label, "workers": workers, "images_per_second": len(dataset) / median,
                             "disk_bytes_per_image": stored_per_image(path)})
        from naf_cli.features import FeatureFile

        with FeatureFile(files["pca"]) as reduced:
            kept = reduced.attrs["pca_variance_kept"]
    result = {"images": len(photos), "vfm": args.vfm, "scale": args.scale, "cold_page_cache": cold, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "pca_variance_kept": kept, "rows": rows}
    for row in rows:
        print(f"{row['method']:55s} workers {row['workers']}: {row['images_per_second']:7.2f} images/s, "
              f"{row['disk_bytes_per_image'] / 2**20:8.2f} MiB per image")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
