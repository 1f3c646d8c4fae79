"""Markdown table of `naf eval --task denoise --json` output: a row per method, PSNR / SSIM per setting,
the best PSNR of each setting in bold, and the mean seconds per megapixel.

    naf eval ../shared/photos/train --task denoise --split validation --json > eval.json
    python benchmarks/denoise_table.py eval.json
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    with open(sys.argv[1]) as handle:
        data = json.load(handle)
    scores = data["scores"]
    settings = list(dict.fromkeys(s["setting"] for s in scores))
    methods = list(dict.fromkeys(s["method"] for s in scores))
    by = {(s["method"], s["setting"]): s for s in scores}
    best = {t: max(by[(m, t)]["psnr"] for m in methods) for t in settings}
    print("| method | " + " | ".join(settings) + " | s / Mpx |")
    print("|---|" + "---|" * (len(settings) + 1))
    for m in methods:
        cells = []
        for t in settings:
            s = by[(m, t)]
            text = f"{s['psnr']:.2f} / {s['ssim']:.3f}"
            cells.append(f"**{text}**" if s["psnr"] == best[t] else text)
        seconds = sum(by[(m, t)]["seconds_per_megapixel"] for t in settings) / len(settings)
        print(f"| {m} | " + " | ".join(cells) + f" | {seconds:.2f} |")


if __name__ == "__main__":
    main()
