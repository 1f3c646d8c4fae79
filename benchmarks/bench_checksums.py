"""What fletcher32 checksums cost: write and read time of feature datasets with and without them.

Writes the same random float16 maps (the README main job's shape by default: 112 x 448 x 448,
45 MB, chunked as naf chunks them) with ``none``, ``gzip`` and ``lzf`` compression, each with
and without ``fletcher32``, then reads every one back (from the page cache: this measures
the CPU cost of the checksum, not the disk). Rows are interleaved over ``--repeats``
rounds and the median is printed, so a busy moment of a shared machine hits every row.

    python benchmarks/bench_checksums.py [--shape 112 448 448] [--images 8] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from naf_cli.pipeline.sizes import chunk_shape


def write(path: Path, maps: list[np.ndarray], compression: str, checksum: bool) -> float:
    options: dict[str, object] = {"fletcher32": checksum}
    if compression != "none":
        options["compression"] = compression
    started = time.perf_counter()
    with h5py.File(path, "w") as f:
        for i, data in enumerate(maps):
            f.create_dataset(f"features/{i}", data=data, chunks=chunk_shape(*data.shape, itemsize=2), **options)
    return time.perf_counter() - started


def read(path: Path) -> float:
    started = time.perf_counter()
    with h5py.File(path, "r") as f:
        for name in f["features"]:
            f["features"][name][()]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[112, 448, 448])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # smooth-ish maps (features are), so gzip and lzf have something to do
    maps = [np.cumsum(rng.standard_normal(args.shape, dtype=np.float32), axis=2).astype(np.float16) / 8
            for _ in range(args.images)]
    megabytes = sum(m.nbytes for m in maps) / 1e6
    rows = [(c, s) for c in ("none", "gzip", "lzf") for s in (False, True)]
    times: dict[tuple[str, bool], dict[str, list[float]]] = {row: {"write": [], "read": []} for row in rows}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for compression, checksum in rows:
                path = Path(folder) / f"{compression}-{checksum}.h5"
                times[(compression, checksum)]["write"].append(write(path, maps, compression, checksum))
                times[(compression, checksum)]["read"].append(read(path))
                path.unlink()
    results = []
    for compression, checksum in rows:
        w = statistics.median(times[(compression, checksum)]["write"])
        r = statistics.median(times[(compression, checksum)]["read"])
        results.append({"compression": compression, "fletcher32": checksum, "write_s": round(w, 4), "read_s": round(r, 4),
                        "write_MBps": round(megabytes / w, 1), "read_MBps": round(megabytes / r, 1)})
    if args.json:
        print(json.dumps({"shape": args.shape, "images": args.images, "megabytes": round(megabytes, 1), "rows": results}, indent=1))
        return
    print(f"{args.images} maps of {'x'.join(map(str, args.shape))} float16 ({megabytes:.0f} MB), median of {args.repeats}")
    print("| compression | fletcher32 | write s | read s | write MB/s | read MB/s |")
    print("|---|---|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['compression']} | {'yes' if row['fletcher32'] else 'no'} | {row['write_s']:.3f} | {row['read_s']:.3f} | "
              f"{row['write_MBps']:.0f} | {row['read_MBps']:.0f} |")


if __name__ == "__main__":
    main()
