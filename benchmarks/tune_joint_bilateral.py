"""Pick the JBU and JBF sigmas on the training photos of models/photo-split.json only.

Scores every (sigma_spatial, sigma_range) of a grid with the `naf eval` protocol at x2 and
x4 and prints the grid and the pair with the lowest mean MSE over both factors (the
registry's defaults, `naf_cli/upsamplers.py`, are set from it; docs/quality.md records it).

    python benchmarks/tune_joint_bilateral.py ../shared/photos/train
"""

from __future__ import annotations

import argparse
from pathlib import Path

from naf_cli.backbones import load_backbone
from naf_cli.cli.eval_cmd import select_photos
from naf_cli.evaluation.protocol import Method, evaluate
from naf_cli.modeling.joint_bilateral import JointBilateralFilter, JointBilateralUpsampling

# spatial sigmas in low-res cells (JBU) and output pixels (JBF); range sigmas in RGB units
GRIDS = {
    "jbu": (JointBilateralUpsampling, (0.5, 1.0, 2.0, 3.0, 4.0), (0.1, 0.2, 0.4, 0.8)),
    "jbf": (JointBilateralFilter, (1.0, 2.0, 4.0, 6.0, 8.0), (0.1, 0.2, 0.4, 0.8)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path)
    parser.add_argument("--vfm", default="effnet-lite0")
    args = parser.parse_args()
    methods = [Method(f"{name} {s} {r}", cls(s, r)) for name, (cls, spatials, ranges) in GRIDS.items()
               for s in spatials for r in ranges]
    result = evaluate(select_photos(args.photos, "train"), load_backbone(args.vfm), methods, [2, 4])
    mean = {m.name: sum(s.mean("mse") for s in result.scores if s.method == m.name) / 2 for m in methods}
    for name, (_, spatials, ranges) in GRIDS.items():
        print(f"{name}: mean MSE of x2 and x4; rows sigma_spatial, columns sigma_range")
        print("| | " + " | ".join(map(str, ranges)) + " |\n|---|" + "---|" * len(ranges))
        for s in spatials:
            print(f"| {s} | " + " | ".join(f"{mean[f'{name} {s} {r}']:.3f}" for r in ranges) + " |")
        best = min((key for key in mean if key.startswith(name)), key=mean.__getitem__)
        print(f"best {name}: sigma_spatial={best.split()[1]}, sigma_range={best.split()[2]} ({mean[best]:.3f})\n")


if __name__ == "__main__":
    main()
