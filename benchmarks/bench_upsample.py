"""Speed of NAF on this machine: the module alone at the published configuration, and the
whole `naf upsample` pipeline on a folder.

    python benchmarks/bench_upsample.py --images examples --ratios 2 8 16

Module: features [384, 28, 28] and a 448 x 448 guidance image, as in the paper's table;
the output is 28 * ratio square. Pipeline: images/s of `upsample_folder` with effnet-lite0.
Results are recorded in docs/benchmarks.md with the machine, date and command.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from naf_cli.backbones import load_backbone
from naf_cli.modeling import NAF
from naf_cli.pipeline import upsample_folder
from naf_cli.upsamplers import load_upsampler


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.inference_mode()
def bench_module(ratios: list[int], repeats: int) -> None:
    model = NAF().eval()
    image = torch.rand(1, 3, 448, 448)
    features = torch.randn(1, 384, 28, 28)
    print("| ratio | output | ms / forward | peak RSS MB (process) |")
    print("|---|---|---|---|")
    for ratio in ratios:
        size = (28 * ratio, 28 * ratio)
        model(image, features, size)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(image, features, size)
        ms = (time.perf_counter() - started) / repeats * 1000
        print(f"| x{ratio} | {size[0]}x{size[1]} | {ms:.0f} | {peak_rss_mb():.0f} |")


def bench_pipeline(images: Path, scale: float) -> None:
    backbone = load_backbone("effnet-lite0")
    for name in ("bilinear", "naf"):
        up, info = load_upsampler(name)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            summary = upsample_folder(images, Path(tmp) / "f.h5", backbone, up, info, scale)
            seconds = time.perf_counter() - started
        print(f"pipeline effnet-lite0 + {name} x{scale:g}: {summary.written} images in {seconds:.1f} s "
              f"= {summary.written / seconds:.2f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("examples"))
    parser.add_argument("--ratios", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=16)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    bench_module(args.ratios, args.repeats)
    bench_pipeline(args.images, args.scale)


if __name__ == "__main__":
    main()
