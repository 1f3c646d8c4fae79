"""`naf eval --task probe`: a linear segmentation probe on composites with exact labels."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naf_cli.backbones import Backbone
    from naf_cli.evaluation.probe import ProbeScore
    from naf_cli.evaluation.protocol import Method

PROBE_FACTORS = (16,)
PROBE_SIZE = 448
PROBE_COMPOSITES = 16
FEW_COMPOSITES = 8


def check_probe_options(photos: list[Path], factors: list[int], composites: int, size: int, patch: int) -> None:
    """Refuse what the probe cannot do, before anything loads (``patch`` 0: not known yet)."""
    from naf_cli.errors import OptionError

    least = 4 * max(patch, 1)
    if size < least:
        raise OptionError(f"--crop {size} is too small for composites (patch {patch}); fix: {least} or more")
    if len(photos) < 2:
        raise OptionError(f"the probe needs two photos or more (each is a class), got {len(photos)}; fix: a folder with more photos")
    bad = [f for f in factors if not 1 <= f <= 32]
    if bad:
        raise OptionError(f"--factor {bad[0]} is out of range for the probe; fix: a factor from 1 to 32, e.g. --factor 4 16")
    if composites < 1:
        raise OptionError(f"--composites must be 1 or more, got {composites}; fix: e.g. --composites 16")


def evaluate_probe_task(photos: list[Path], split: str, vfm: str, backbone: Backbone, methods: list[Method],
                        factors: list[int], composites: int, size: int, as_json: bool, recorded: Mapping[str, object]) -> None:
    """Composites from the photos (each a class), every method at every factor, a table or JSON."""
    from naf_cli.cli.progress import make_progress
    from naf_cli.evaluation.composites import load_photos, make_composites
    from naf_cli.evaluation.probe import evaluate_probe

    patch = backbone.info.patch_size
    check_probe_options(photos, factors, composites, size, patch)  # again, now that the patch is known (timm: models)
    side = size // patch * patch
    if composites < FEW_COMPOSITES:
        print(f"note: with {composites} test composites the mIoU and its interval say little; fix: --composites "
              f"{PROBE_COMPOSITES} or more", file=sys.stderr)
    images = load_photos(photos, short_side=4 * side)  # a half covers 1.25 x the canvas: more is never used
    train = make_composites(images, "train", composites, side, seed=0)
    test = make_composites(images, "test", composites, side, seed=0)
    progress = make_progress()
    progress.start(len(factors) * len(methods), f"naf eval --task probe {vfm}: {composites}+{composites} composites of {side} px")
    try:
        scores = evaluate_probe(train, test, len(photos), backbone, methods, factors, advance=progress.advance)
    finally:
        progress.close()
    if as_json:
        print(json.dumps({"task": "probe", "vfm": vfm, "layer": backbone.info.layer, **recorded,
                          "photos": [p.name for p in photos], "split": split, "composite_size": side,
                          "composites": composites, "scores": [s.as_dict() for s in scores]}, indent=1))
        return
    render_probe(scores, side, len(photos))


def render_probe(scores: list[ProbeScore], side: int, classes: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for factor in dict.fromkeys(s.factor for s in scores):
        rows = [s for s in scores if s.factor == factor]
        table = Table("method", "mIoU %", "mIoU 95% interval", "accuracy %", "boundary accuracy %",
                      title=f"x{factor}: linear probe, {classes} classes (one per photo), {rows[0].composites} test composites "
                            f"of {side} px (higher is better; * the best mIoU; interval: bootstrap over the test composites; "
                            f"boundary: within half a cell of a label boundary)")
        best = max(s.metrics["miou"] for s in rows)
        for s in rows:
            cells = ["-" if math.isnan(s.metrics[key]) else f"{100 * s.metrics[key]:.1f}"
                     for key in ("miou", "accuracy", "boundary_accuracy")]
            cells[0] += " *" if s.metrics["miou"] == best else ""
            low, high = s.miou_interval
            table.add_row(s.method, cells[0], f"{100 * low:.1f}-{100 * high:.1f}", *cells[1:])
        console.print(table)
