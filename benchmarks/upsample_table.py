"""Markdown table of `naf eval --json` output (the upsample task): a row per method, MSE,
edge MSE and cosine per factor, the lowest MSE and edge MSE of each factor in bold, and a
last line naming, per factor and metric, the best training-free method and the margin of
one NAF row over it.

    naf eval ../shared/photos/train --split validation --factor 2 4 8 --json > eval.json
    python benchmarks/upsample_table.py eval.json ["naf (default)"]
"""

from __future__ import annotations

import json
import sys

from naf_cli.evaluation.protocol import TRAINING_FREE, UNTRAINED_LABEL

LOWER_IS_BETTER = ("mse", "edge_mse")


def main() -> None:
    with open(sys.argv[1]) as handle:
        data = json.load(handle)
    focus = sys.argv[2] if len(sys.argv) > 2 else "naf (default)"
    scores = data["scores"]
    factors = sorted({s["factor"] for s in scores})
    methods = list(dict.fromkeys(s["method"] for s in scores))
    by = {(s["method"], s["factor"]): s for s in scores}
    best = {(f, k): min(by[(m, f)][k] for m in methods) for f in factors for k in LOWER_IS_BETTER}
    header = [f"x{f} {label}" for f in factors for label in ("MSE", "edge MSE", "cos")]
    print("| method | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for m in methods:
        cells = []
        for f in factors:
            s = by[(m, f)]
            for key in ("mse", "edge_mse"):
                text = f"{s[key]:.3f}"
                cells.append(f"**{text}**" if s[key] == best[(f, key)] else text)
            cells.append(f"{s['cosine']:.3f}")
        print(f"| {m} | " + " | ".join(cells) + " |")
    if focus not in methods:
        return
    margins = []
    for f in factors:
        for key in LOWER_IS_BETTER:
            rival = min((*TRAINING_FREE, UNTRAINED_LABEL), key=lambda m: by[(m, f)][key])
            ours, theirs = by[(focus, f)][key], by[(rival, f)][key]
            margins.append(f"x{f} {key}: {100 * (ours / theirs - 1):+.1f}% against {rival}")
    print(f"\n{focus} against the best training-free method: " + "; ".join(margins))


if __name__ == "__main__":
    main()
