"""``naf eval --task probe``: a linear segmentation probe on each method's upsampled features.

Per factor f and method: the backbone's features of each composite (``composites``) are
upsampled to f times their grid, guided by the composite; a linear classifier (multinomial
logistic regression on standardised features, fitted to convergence: the problem is convex,
so the result does not depend on where an optimiser stopped) is fitted on pixels sampled from
the training composites and scored on every pixel of the test composites: mean IoU over the
classes with a 95% bootstrap interval over the test composites, pixel accuracy, and accuracy
near label boundaries (within half a low-resolution cell, where coarse features cannot tell
the classes apart and the upsampler must follow the image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from naf_cli.backbones import Backbone
from naf_cli.evaluation.composites import Composite
from naf_cli.evaluation.protocol import Method

PROBE_METRICS = ("miou", "accuracy", "boundary_accuracy")
TRAIN_PIXELS = 4096  # pixels sampled from each training composite
PROBE_STEPS = 500  # at most this many L-BFGS iterations; the fit stops earlier at its tolerance
WEIGHT_DECAY = 1e-4
BOOTSTRAP = 1000  # resamplings of the test composites for the mIoU interval


def boundary_band(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """[H, W] bool: pixels with a pixel of another label within ``radius`` (a square window)."""
    if radius < 1:
        radius = 1
    padded = labels[None, None].double()
    high = F.max_pool2d(padded, 2 * radius + 1, stride=1, padding=radius)
    low = -F.max_pool2d(-padded, 2 * radius + 1, stride=1, padding=radius)
    return (high != low)[0, 0]


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``labels`` [S, S] sampled at the centres of a ``size`` grid's pixels (exact when the sizes match)."""
    rows = ((torch.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).long().clamp(max=labels.shape[0] - 1)
    cols = ((torch.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).long().clamp(max=labels.shape[1] - 1)
    return labels[rows][:, cols]


def mean_iou(confusion: torch.Tensor) -> float:
    """mIoU of a confusion matrix (true x predicted) over the classes present in either (nan: none)."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    seen = union > 0
    return float((hits[seen] / union[seen]).mean()) if bool(seen.any()) else math.nan


@dataclass
class SegmentationCounts:
    """Confusion matrices (true class x predicted class), one per scored map, and the boundary
    band's hits."""

    classes: int
    confusions: list[torch.Tensor] = field(default_factory=list)
    band_correct: int = 0
    band_total: int = 0

    def add(self, predicted: torch.Tensor, labels: torch.Tensor, band: torch.Tensor) -> None:
        index = labels.reshape(-1) * self.classes + predicted.reshape(-1)
        self.confusions.append(torch.bincount(index, minlength=self.classes ** 2).reshape(self.classes, self.classes))
        hits = predicted == labels
        self.band_correct += int(hits[band].sum())
        self.band_total += int(band.sum())

    def scores(self) -> dict[str, float]:
        """mIoU (confusions summed over the maps), pixel accuracy, and accuracy in the boundary
        band (nan when the band is empty)."""
        confusion = torch.stack(self.confusions).sum(0).double()
        return {"miou": mean_iou(confusion),
                "accuracy": float(confusion.diagonal().sum() / confusion.sum()) if confusion.sum() > 0 else math.nan,
                "boundary_accuracy": self.band_correct / self.band_total if self.band_total else math.nan}

    def miou_interval(self, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
        """The 2.5th and 97.5th percentiles of the mIoU over ``resamples`` draws of the maps with
        replacement (a bootstrap over test composites: how much the figure owes to which composites)."""
        stacked = torch.stack(self.confusions).double()
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randint(0, len(self.confusions), (resamples, len(self.confusions)), generator=generator)
        values = torch.tensor([mean_iou(stacked[draw].sum(0)) for draw in draws])
        return float(values.quantile(0.025)), float(values.quantile(0.975))


class LinearProbe:
    """Multinomial logistic regression on standardised features, fitted by L-BFGS."""

    def __init__(self, classes: int, steps: int = PROBE_STEPS, weight_decay: float = WEIGHT_DECAY) -> None:
        self.classes = classes
        self.steps = steps
        self.weight_decay = weight_decay
        self.mean = self.std = self.weight = self.bias = torch.empty(0)

    def fit(self, features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> LinearProbe:
        """``features`` [N, C], ``labels`` [N] (int64); may be called under inference mode."""
        with torch.inference_mode(False), torch.enable_grad():
            self._fit(features.double().clone(), labels.clone(), seed)
        return self

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.mean = features.mean(0)
        self.std = features.std(0).clamp_min(1e-6)
        x = (features - self.mean) / self.std
        generator = torch.Generator().manual_seed(seed)
        weight = (torch.randn(x.shape[1], self.classes, generator=generator, dtype=torch.float64) * 0.01).requires_grad_()
        bias = torch.zeros(self.classes, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], max_iter=self.steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                                      history_size=20, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            value = F.cross_entropy(x @ weight + bias, labels) + self.weight_decay * weight.pow(2).sum()
            value.backward()
            return value

        optimiser.step(loss)
        self.weight, self.bias = weight.detach(), bias.detach()

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [C, H, W] -> the class of each pixel [H, W]."""
        channels, height, width = features.shape
        x = (features.reshape(channels, -1).T.double() - self.mean) / self.std
        return (x @ self.weight + self.bias).argmax(1).reshape(height, width)


@dataclass(frozen=True)
class ProbeScore:
    """One method at one factor: the test composites' mIoU, accuracy and boundary accuracy."""

    factor: int
    method: str
    composites: int
    classes: int
    metrics: dict[str, float]
    miou_interval: tuple[float, float]

    def as_dict(self) -> dict[str, object]:
        return {"factor": self.factor, "method": self.method, "composites": self.composites, "classes": self.classes,
                **{key: value if math.isfinite(value) else None for key, value in self.metrics.items()},
                "miou_interval": list(self.miou_interval)}


@torch.inference_mode()
def evaluate_probe(train: Sequence[Composite], test: Sequence[Composite], classes: int, backbone: Backbone,
                   methods: Sequence[Method], factors: Sequence[int], seed: int = 0,
                   advance: Callable[[str], None] = lambda name: None) -> list[ProbeScore]:
    """Every method at every factor, on the same composites; ``advance`` after each method's factor."""
    device = next(backbone.buffers()).device
    low = [[backbone(c.image[None].to(device)).float() for c in part] for part in (train, test)]
    scores = []
    for factor in factors:
        for method in methods:
            scores.append(_probe_one(method, factor, train, test, low, classes, seed))
            advance(f"x{factor} {method.name}")
    return scores


def _upsampled(method: Method, composite: Composite, features: torch.Tensor, factor: int) -> torch.Tensor:
    """[C, h*f, w*f] on the CPU."""
    size = (features.shape[-2] * factor, features.shape[-1] * factor)
    image = composite.image[None].to(features.device)
    return method.upsampler(image, features, size)[0].float().cpu()


def _probe_one(method: Method, factor: int, train: Sequence[Composite], test: Sequence[Composite],
               low: list[list[torch.Tensor]], classes: int, seed: int) -> ProbeScore:
    generator = torch.Generator().manual_seed(seed)
    samples, targets = [], []
    for composite, features in zip(train, low[0], strict=True):
        upsampled = _upsampled(method, composite, features, factor)
        labels = labels_at(composite.labels, (int(upsampled.shape[-2]), int(upsampled.shape[-1])))
        pick = torch.randint(0, labels.numel(), (TRAIN_PIXELS,), generator=generator)
        samples.append(upsampled.reshape(upsampled.shape[0], -1)[:, pick].T)
        targets.append(labels.reshape(-1)[pick])
    probe = LinearProbe(classes).fit(torch.cat(samples), torch.cat(targets), seed)
    counts = SegmentationCounts(classes)
    for composite, features in zip(test, low[1], strict=True):
        upsampled = _upsampled(method, composite, features, factor)
        labels = labels_at(composite.labels, (int(upsampled.shape[-2]), int(upsampled.shape[-1])))
        counts.add(probe.predict(upsampled), labels, boundary_band(labels, factor // 2))
    return ProbeScore(factor, method.name, len(test), classes, counts.scores(), counts.miou_interval())
