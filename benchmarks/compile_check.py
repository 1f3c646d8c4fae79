"""Eager against ``torch.compile`` for the module ``load_naf()`` returns: time and agreement.

One JSON object on stdout: per precision and variant, the eager and compiled forward (median
of --repeats, the two interleaved, after one warm-up), the first compiled call's seconds (the
compile), and the compiled output's relative L2 distance to the eager one. Variants: NAF's
fused kernels (``NAF(fused_kernels="compiled")``, what the default switches to on a CPU once
a run is long), and ``torch.compile`` of the whole module (with and without dynamic shapes).

    python benchmarks/compile_check.py --device cuda                 # x16, 384 channels, 448 x 448
    python benchmarks/compile_check.py --device cpu --channels 8 --lr-size 4 --image-size 32 --repeats 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from naf_cli.checkpoints import load_naf
from naf_cli.modeling import NAF
from naf_cli.modeling.fused_kernels import COMPILED, EAGER, KernelChoice, failure


def _timed(call: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], torch.empty(0)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


VARIANTS = ("fused", "whole", "static")


def _compiled(model: NAF, variant: str) -> torch.nn.Module:
    if variant == "fused":
        fused = copy.deepcopy(model)
        fused.kernel_choice = KernelChoice(COMPILED)
        return fused
    return torch.compile(model, dynamic=False if variant == "static" else None)  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--lr-size", type=int, default=28)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="fused: NAF's compiled fused kernels; whole: torch.compile(model); static: the same "
                             "with dynamic=False")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(1, 3, args.image_size, args.image_size, device=device)
    features = torch.randn(1, args.channels, args.lr_size, args.lr_size, device=device)
    size = (args.image_size, args.image_size)
    report: dict[str, object] = {"device": str(device), "torch": torch.__version__, "channels": args.channels,
                                 "lr_size": args.lr_size, "image_size": args.image_size,
                                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "rows": []}
    model = load_naf(device=device).eval()
    model.kernel_choice = KernelChoice(EAGER)  # the reference: never switched by a long run
    for precision in args.precision:
        def run(module: torch.nn.Module, precision: str = precision) -> torch.Tensor:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return module(image, features, size).float()

        _timed(lambda: run(model), device, 1)
        for variant in args.variant:
            row: dict[str, object] = {"precision": precision, "variant": variant}
            candidate = _compiled(model, variant)
            try:
                compile_s, _ = _timed(lambda: run(candidate), device, 1)  # noqa: B023 (called at once)
                eager_times, compiled_times = [], []
                for _ in range(args.repeats):  # interleaved: a machine's drift falls on both alike
                    seconds, eager = _timed(lambda: run(model), device, 1)
                    eager_times.append(seconds)
                    seconds, out = _timed(lambda: run(candidate), device, 1)  # noqa: B023
                    compiled_times.append(seconds)
                eager_s, compiled_s = statistics.median(eager_times), statistics.median(compiled_times)
                row.update(eager_ms=round(1e3 * eager_s, 2), compiled_ms=round(1e3 * compiled_s, 2),
                           compile_seconds=round(compile_s, 1), speedup=round(eager_s / compiled_s, 3),
                           relative_l2=float((out - eager).norm() / eager.norm()))
                if variant == "fused" and failure() is not None:
                    row["error"] = f"the fused kernels fell back to eager: {failure()}"
            except Exception as err:  # a compiler failure is a finding, not the end of the check
                row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            report["rows"].append(row)  # type: ignore[union-attr]
            print(json.dumps(row), file=sys.stderr, flush=True)  # as it goes; stdout holds the one report
            torch._dynamo.reset()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
