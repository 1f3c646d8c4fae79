"""Speed and peak memory of `naf denoise`'s whole-image path (the shipped `mixed` model) on random
images, one process per size so the peak is the size's own, beside the estimate that decides
whole image or bands.

    python benchmarks/bench_denoise.py 512 1024
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time


def measure(side: int) -> None:
    import torch

    from naf_cli.checkpoints import load_denoiser
    from naf_cli.modeling.restoration_tiles import whole_image_bytes
    from naf_cli.pipeline.restore import restore

    denoiser = load_denoiser()
    image = torch.rand(3, side, side)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    restore(denoiser, image, torch.device("cpu"), 2**36)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    print(f"{side} x {side}: {seconds:.1f} s ({seconds / (side * side / 1e6):.1f} s/Mpx), peak {peak / 2**20:.0f} MiB "
          f"above the start, estimate {whole_image_bytes(denoiser, (side, side)) / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        measure(int(sys.argv[2]))
    else:
        for size in sys.argv[1:] or ["512", "1024"]:
            subprocess.run([sys.executable, __file__, "--one", size], check=True)
