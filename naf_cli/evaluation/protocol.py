"""``naf eval --task upsample``: every method predicts a backbone's features of each photo at
f times a base size from its features at the base size, guided by the large image
(``pairs.target_image``); scored against the backbone's own features (``metrics``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from naf_cli.backbones import Backbone
from naf_cli.evaluation.metrics import edge_band, reconstruction_metrics
from naf_cli.evaluation.pairs import feature_pair, target_image
from naf_cli.images import load_image
from naf_cli.modeling import Upsampler

METRICS = ("mse", "edge_mse", "cosine", "edge_cosine", "seam", "variance")
# the untrained NAF is this seed's initialisation
UNTRAINED_SEED = 0
# the rows every NAF checkpoint must beat: the registry's training-free upsamplers and the untrained NAF
TRAINING_FREE = ("nearest", "bilinear", "bicubic", "jbu", "jbf")
UNTRAINED_LABEL = "naf (untrained)"


@dataclass(frozen=True)
class Method:
    """One upsampler under evaluation, with the name its row shows."""

    name: str
    upsampler: Upsampler


@dataclass
class Score:
    """Mean metrics of one method at one factor, over the photos large enough for it."""

    factor: int
    method: str
    images: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))

    def add(self, metrics: dict[str, float]) -> None:
        self.images += 1
        for key in METRICS:
            if not math.isnan(metrics[key]):
                self.sums[key] += metrics[key]
                self.counts[key] += 1

    def mean(self, key: str) -> float:
        return self.sums[key] / self.counts[key] if self.counts[key] else float("nan")

    def as_dict(self) -> dict[str, object]:
        # null, not NaN or inf (which are not JSON), for a metric no photo had (an edge band that is
        # empty) or one without a finite value (the seam of nearest, constant inside its cells)
        means = {key: self.mean(key) for key in METRICS}
        return {"factor": self.factor, "method": self.method, "images": self.images,
                **{key: value if math.isfinite(value) else None for key, value in means.items()}}


@dataclass
class Evaluation:
    scores: list[Score]
    too_small: dict[int, list[str]]  # factor -> photos left out (smaller than the target)


def untrained_naf() -> Upsampler:
    from naf_cli.modeling import NAF

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return NAF().eval()


@torch.inference_mode()
def evaluate(photos: Sequence[Path], backbone: Backbone, methods: Sequence[Method], factors: Sequence[int],
             advance: Callable[[str], None] = lambda name: None) -> Evaluation:
    """Score every method on every photo at every factor; ``advance`` is called once per photo."""
    device = next(backbone.buffers()).device
    scores = {(f, m.name): Score(f, m.name) for f in factors for m in methods}
    too_small: dict[int, list[str]] = {f: [] for f in factors}
    for path in photos:
        photo = load_image(path)
        for factor in factors:
            image = target_image(photo, factor, backbone.info.patch_size)
            if image is None:
                too_small[factor].append(path.name)
                continue
            batch = image[None].to(device)
            low, target = feature_pair(backbone, batch, factor)
            grid = (int(target.shape[-2]), int(target.shape[-1]))
            band = edge_band(image, grid).to(device)
            for method in methods:
                prediction = method.upsampler(batch, low, grid)
                scores[(factor, method.name)].add(reconstruction_metrics(prediction[0], target[0], band, factor))
        advance(path.name)
    return Evaluation(list(scores.values()), too_small)
