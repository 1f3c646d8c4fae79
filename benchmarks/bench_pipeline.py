"""Throughput of the streaming pipeline: images/s, time split, peak memory, with and without
decoding workers, on generated photos.

    python benchmarks/bench_pipeline.py --photos ../shared/photos/train --count 500 --work /tmp/naf-bench

Makes COUNT JPEGs (seeded crops of the given photos, 640x480 or 480x640) once, then runs
`naf extract` and `naf upsample --upsampler bilinear --scale 4` on the first 100 and on all
COUNT images, with `--workers 0` and the default, each as its own process. Peak RSS is the
naf process's own (wait4), not its decoding workers'. Then the upsample on 100 images with
each `--compression`: size on disk and images/s. Prints Markdown tables for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

NAF = [sys.executable, "-m", "naf_cli"]


def make_images(photos: Path, count: int, folder: Path, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        with Image.open(rng.choice(sources)) as img:
            img = img.convert("RGB")
            w, h = (640, 480) if rng.random() < 0.75 else (480, 640)
            scale = max(w / img.width, h / img.height) * rng.uniform(1.0, 1.6)
            img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))))
            left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
            img.crop((left, top, left + w, top + h)).save(path, quality=90)
    return paths


def run(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of the process, stderr)."""
    started = time.perf_counter()
    process = subprocess.Popen([*NAF, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 3):
        raise SystemExit(f"naf {' '.join(args)} failed:\n{err[-2000:]}")
    return time.perf_counter() - started, usage.ru_maxrss * 1024, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--work", type=Path, default=Path("/tmp/naf-bench"))
    args = parser.parse_args()
    paths = make_images(args.photos, args.count, args.work / "images")
    lists = {}
    for n in sorted({100, args.count}):
        lists[n] = args.work / f"first{n}.txt"
        lists[n].write_text("".join(f"images/{p.name}\n" for p in paths[:n]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print("| command | images | workers | images/s | model busy | compute s | decode s | write s | wall s (with start-up) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    jobs = {"extract": ["extract"], "upsample bilinear x4": ["upsample", "--upsampler", "bilinear", "--scale", "4"]}
    for label, job in jobs.items():
        for n, listing in lists.items():
            for workers in ("0", "default"):
                out = args.work / "out.h5"
                out.unlink(missing_ok=True)
                shutil.rmtree(args.work / "out.h5.shards", ignore_errors=True)
                extra = [] if workers == "default" else ["--workers", workers]
                wall, rss, err = run([*job, "--files-from", str(listing), "-o", str(out), "--device", "cpu", *extra])
                busy = re.search(r"model busy\s+(\d+)% \(compute ([\d.]+) s; decode ([\d.]+) s and write ([\d.]+) s", err)
                rate = re.search(r"\(([\d.]+) images/s\)", err)
                assert busy and rate, err[-1000:]
                print(f"| {label} | {n} | {workers} | {rate[1]} | {busy[1]}% | {busy[2]} | {busy[3]} | {busy[4]} | "
                      f"{wall:.1f} | {rss / 2**20:.0f} |", flush=True)
    print("\n| compression | size on disk MB (100 images, bilinear x4, float16) | images/s |")
    print("|---|---|---|")
    for compression in ("none", "gzip", "lzf"):
        out = args.work / f"c-{compression}.h5"
        out.unlink(missing_ok=True)
        shutil.rmtree(args.work / f"c-{compression}.h5.shards", ignore_errors=True)
        _, _, err = run([*jobs["upsample bilinear x4"], "--files-from", str(lists[100]), "-o", str(out),
                         "--device", "cpu", "--compression", compression])
        rate = re.search(r"\(([\d.]+) images/s\)", err)
        assert rate, err[-1000:]
        size = out.stat().st_size + sum(p.stat().st_size for p in (args.work / f"c-{compression}.h5.shards").iterdir())
        print(f"| {compression} | {size / 2**20:.1f} | {rate[1]} |", flush=True)


if __name__ == "__main__":
    main()
