"""Training NAF: feature reconstruction (MSE, AdamW), any number of teacher backbones, inputs
at several factors (the paper's second stage), periodic validation with ``naf eval``'s
protocol, the best checkpoint kept; resumable to the step."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from naf_cli.backbones import Backbone, load_backbone
from naf_cli.checkpoints import load_naf, save_naf
from naf_cli.defaults import DEFAULT_VFM
from naf_cli.errors import OptionError
from naf_cli.evaluation.pairs import BASE_CELLS, feature_pair, needed_short_side, short_sides
from naf_cli.modeling.naf import NAF
from naf_cli.training.curve import draw_curves
from naf_cli.training.data import RandomCrops
from naf_cli.training.steps import (
    BEST_FILE,
    CURVE_FILE,
    FINAL_FILE,
    LOSS_FILE,
    VALIDATION_FILE,
    RunSettings,
    TrainingRun,
    run_steps,
)


@dataclass
class TrainConfig(RunSettings):
    """One training run; the keys are exactly what ``naf train`` takes.

    Each step draws ``batch_size`` crops of ``crop`` pixels; step ``s`` uses teacher
    ``s mod T`` (``backbone`` first, then ``extra_backbones``: NAF's attention has no
    parameters, so one encoder serves every backbone) and factor ``factors[(s // T) mod F]``:
    the target is the teacher's features of the crop, the input its features of the crop
    downscaled by the factor (``feature_pair``), the guidance the crop.

    With ``split`` (a JSON file with ``train`` and ``validation`` lists of file names), only
    the training photos are drawn, and every ``validate_every`` steps the model is scored on
    the validation photos with ``naf eval``'s protocol (first teacher, ``validation_factors``):
    the lowest mean MSE is kept as ``best.safetensors``. ``init`` starts from a checkpoint.

    ``loss``: ``mse``, the paper's plain MSE; or ``relative``, the MSE divided by that of the
    bilinear upsampling of the same input (detached, per batch), so that every factor weighs
    alike: at x16 the plain MSE is about 3 times that of x2, and its steps dominate a mixed run.
    """

    backbone: str = DEFAULT_VFM
    backbone_weights: str | None = None
    extra_backbones: tuple[str, ...] = ()
    factors: tuple[int, ...] = (2,)
    validation_factors: tuple[int, ...] = (2, 4)
    loss: str = "mse"


LOSSES = ("mse", "relative")


def split_names(split: str | None, exclude: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """(names to exclude from training, validation names) of a split file (and ``exclude``)."""
    if split is None:
        return tuple(exclude), []
    try:
        validation = list(json.loads(Path(split).read_text())["validation"])
    except (OSError, ValueError, KeyError) as err:
        raise OptionError(f"cannot read the split {split} ({err}); fix: pass a JSON file with train and "
                          f"validation lists, e.g. models/photo-split.json") from err
    return tuple(exclude) + tuple(validation), validation


def _check(config: TrainConfig) -> None:
    for factor in (*config.factors, *config.validation_factors):
        if factor < 2:
            raise OptionError(f"factor {factor}: training factors must be 2 or more")
    unknown = [f for f in config.validation_factors if f not in BASE_CELLS]
    if unknown:
        raise OptionError(f"--validation-factor {unknown[0]} is not part of naf eval's protocol; fix: use "
                          f"{', '.join(map(str, BASE_CELLS))}")
    if config.loss not in LOSSES:
        raise OptionError(f"--loss {config.loss} is unknown; fix: use {' or '.join(LOSSES)}")
    if config.crop % (16 * max(config.factors)):
        raise OptionError(f"--crop {config.crop} must be a multiple of 16 x the largest factor ({max(config.factors)}); "
                          f"fix: e.g. --crop {16 * max(config.factors) * 8}")


def _check_validation_sizes(photos: list[Path], factors: tuple[int, ...], patch_size: int) -> None:
    """Every validation factor needs a photo large enough for it: a factor none fits would make
    every validation score nan, so no best weights would ever be kept."""
    largest = max(short_sides(photos), default=0.0)
    for factor in factors:
        needed = needed_short_side(factor, patch_size)
        if largest < needed:
            raise OptionError(f"--validation-factor {factor}: no validation photo has the short side of {needed} pixels it "
                              f"needs (the largest has {largest:.0f}); fix: leave {factor} out of --validation-factor, "
                              f"or add larger photos to the split's validation list")


def step_loss(prediction: torch.Tensor, low: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The training objective of one step (``TrainConfig.loss``): prediction and target [B, C, H, W],
    low [B, C, h, w]."""
    loss = F.mse_loss(prediction, target)
    if kind == "relative":
        bilinear = F.interpolate(low, size=(int(target.shape[-2]), int(target.shape[-1])), mode="bilinear", align_corners=False)
        loss = loss / F.mse_loss(bilinear, target).detach().clamp_min(1e-12)
    return loss


class Validator:
    """Scores the model with ``naf eval``'s protocol on the validation photos; keeps the best."""

    def __init__(self, photos: list[Path], backbone: Backbone, factors: tuple[int, ...], out_dir: Path) -> None:
        self.photos, self.backbone, self.factors, self.out_dir = photos, backbone, factors, out_dir

    def score(self, model: NAF, step: int) -> float:
        from naf_cli.evaluation.protocol import Method, evaluate

        model.eval()
        result = evaluate(self.photos, self.backbone, [Method("naf", model)], self.factors)
        model.train()
        path = self.out_dir / VALIDATION_FILE
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "factor", "images", "mse", "edge_mse", "cosine", "edge_cosine"])
            for s in result.scores:
                writer.writerow([step, s.factor, s.images, *(f"{s.mean(k):.5f}" for k in ("mse", "edge_mse", "cosine", "edge_cosine"))])
        return sum(s.mean("mse") for s in result.scores) / len(result.scores)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> NAF:
    """Train (or resume training of) a NAF; returns the model after ``config.steps`` steps.

    ``out_dir`` receives ``train_state.pt`` every ``checkpoint_every`` steps (weights,
    optimizer, data generator, best validation score, so a resumed run continues the same
    sequence), ``loss.csv``, with a split ``validation.csv``, ``best.safetensors`` and
    ``curves.png``, and at the end ``naf.safetensors``.
    """
    _check(config)
    out_dir = Path(config.out_dir)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    teachers = [load_backbone(config.backbone, config.backbone_weights, device)]
    teachers += [load_backbone(name, None, device) for name in config.extra_backbones]
    excluded, validation_names = split_names(config.split, config.exclude)
    data = RandomCrops(Path(config.images), config.crop, excluded)
    validator_photos = []
    if validation_names and config.validate_every > 0:
        validator_photos = [Path(config.images) / name for name in validation_names if (Path(config.images) / name).is_file()]
        if not validator_photos:
            raise OptionError(f"none of the {len(validation_names)} validation photos of {config.split} is in {config.images}; "
                              f"fix: pass the folder the split was made for, or --validate-every 0")
        _check_validation_sizes(validator_photos, config.validation_factors, teachers[0].info.patch_size)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be there
    model = load_naf(config.init, device=device, backbone=config.backbone).train() if config.init else NAF().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    run = TrainingRun(model, optimizer, torch.Generator().manual_seed(config.seed), out_dir, best=float("inf"))
    run.resume(log)
    names = ", ".join(t.info.name for t in teachers)
    log(f"training on {len(data.paths)} images from {config.images}, teachers {names}, factors {config.factors}, "
        f"{config.steps} steps")

    def take_step(step: int) -> tuple[float, list[object]]:
        teacher = teachers[step % len(teachers)]
        factor = config.factors[(step // len(teachers)) % len(config.factors)]
        images = data.batch(config.batch_size, run.generator).to(device)
        low, target = feature_pair(teacher, images, factor)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            prediction = model(images, low, tuple(target.shape[-2:]))
        loss = step_loss(prediction.float(), low, target, config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item(), [teacher.info.name, factor]

    validate = None
    if validator_photos:
        validator = Validator(validator_photos, teachers[0], config.validation_factors, out_dir)

        def validate() -> None:
            score = validator.score(model, run.step)
            if score < run.best:
                run.best = score
                save_naf(model, out_dir / BEST_FILE, _metadata(config, run, teachers))
            log(f"step {run.step}: validation mean MSE {score:.4f} (best {run.best:.4f})")
            draw_curves(out_dir / LOSS_FILE, out_dir / VALIDATION_FILE, out_dir / CURVE_FILE)

    if run_steps(run, config.steps, config.checkpoint_every, take_step, ["teacher", "factor"], log, validate,
                 config.validate_every, None if config.max_minutes is None else 60 * config.max_minutes, config.lr, config.lr_schedule):
        save_naf(model, out_dir / FINAL_FILE, _metadata(config, run, teachers))
    return model.eval()


def _metadata(config: TrainConfig, run: TrainingRun, teachers: list[Backbone]) -> dict[str, str]:
    return {"config": json.dumps(asdict(config)), "steps": str(run.step), "elapsed_s": f"{run.elapsed:.0f}",
            "backbone": ",".join(t.info.name for t in teachers), "validation_best_mse": f"{run.best:.5f}",
            "sessions": json.dumps(run.sessions_now())}
