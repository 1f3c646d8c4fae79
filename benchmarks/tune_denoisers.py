"""Tune each classical denoiser's parameter per noise setting on the training photos.

The photos are the training part of models/photo-split.json (never the validation part),
each cut to its central --crop square and noised as `naf eval --task denoise` does. For
every peer and setting the grid value with the highest mean PSNR wins; the result is
written as JSON to models/denoisers-tuned.json, where `naf eval --task denoise` reads it
(naf_cli/evaluation/denoisers.py, tuned_parameters).

    python benchmarks/tune_denoisers.py ../shared/photos/train --photos 6 --crop 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from naf_cli.evaluation.denoise_protocol import noisy_cases
from naf_cli.evaluation.denoisers import PEERS
from naf_cli.evaluation.image_quality import psnr
from naf_cli.evaluation.noise import EVAL_SETTINGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--split", type=Path, default=Path(__file__).parent.parent / "models" / "photo-split.json")
    parser.add_argument("--photos", dest="count", type=int, default=6, help="training photos used (the first N of the list)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).parent.parent / "models" / "denoisers-tuned.json")
    parser.add_argument("--peers", nargs="*", default=None, help="only these peers (default: all)")
    args = parser.parse_args()
    names = json.loads(args.split.read_text())["train"][: args.count]
    cases = noisy_cases([args.photos / n for n in names], EVAL_SETTINGS, args.crop, seed=1)
    tuned: dict[str, dict[str, float]] = {}
    for peer in PEERS.values():
        if args.peers is not None and peer.name not in args.peers:
            continue
        if not peer.available:
            print(f"# {peer.name}: not installed, skipped")
            continue
        for setting in EVAL_SETTINGS:
            if peer.name == "bm3d" and setting.kind == "gaussian":
                continue  # given the true sigma
            subset = [c for c in cases if c[0] == setting]
            means = {value: sum(psnr(peer.run(noisy, value).clamp(0, 1), clean) for _, _, clean, noisy in subset) / len(subset)
                     for value in peer.grid}
            best = max(means, key=lambda v: means[v])
            edge = " (grid edge)" if best in (peer.grid[0], peer.grid[-1]) else ""
            print(f"# {peer.name} {setting.label}: {peer.parameter}={best:g} {means[best]:.2f} dB{edge}", flush=True)
            tuned.setdefault(peer.name, {})[setting.label] = best
    args.output.write_text(json.dumps({"photos": names, "crop": args.crop, "noise_seed": 1, "tuned": tuned}, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
