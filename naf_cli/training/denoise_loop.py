"""Training the restoration variant (``naf train --task denoise``): clean crops, synthetic
noise, the paper's loss, periodic validation by PSNR, the best checkpoint kept; resumable
to the step."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from naf_cli.checkpoints import save_denoiser
from naf_cli.errors import OptionError
from naf_cli.evaluation.denoise_protocol import central_crop
from naf_cli.evaluation.image_quality import psnr, restoration_loss, ssim
from naf_cli.evaluation.noise import EVAL_SETTINGS, KINDS, Noise, draw_noise
from naf_cli.images import load_image
from naf_cli.modeling.restoration import Denoiser
from naf_cli.training.curve import draw_curves
from naf_cli.training.data import RandomCrops
from naf_cli.training.loop import split_names
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

VALIDATION_CROP = 96
LOSS_CURVE_FILE = "loss.png"


@dataclass
class DenoiseConfig(RunSettings):
    """One restoration training run; the keys are what ``naf train --task denoise`` takes.

    Each step draws ``batch_size`` clean crops of ``crop`` pixels and noises each with a
    kind drawn from ``kinds`` (``evaluation/noise.py``: levels uniform in [0.1, 0.5]); the
    loss is 1.0 L1 + 5.0 L2 + 0.2 (1 - SSIM). With ``split``, validation every
    ``validate_every`` steps: the central ``VALIDATION_CROP`` square of each validation
    photo under each evaluation setting of those kinds, fixed noise; the highest mean PSNR
    is kept as ``best.safetensors``.
    """

    kinds: tuple[str, ...] = KINDS
    steps: int = 2000
    batch_size: int = 8
    crop: int = 64


class DenoiseValidator:
    """Mean PSNR of the model on fixed noisy crops of the validation photos; logs each setting."""

    def __init__(self, photos: list[Path], kinds: tuple[str, ...], out_dir: Path, device: torch.device) -> None:
        self.settings = [s for s in EVAL_SETTINGS if s.kind in kinds]
        clean = [central_crop(load_image(p), VALIDATION_CROP) for p in photos]
        generator = torch.Generator().manual_seed(0)
        self.cases = [(s, c, s.apply(c, generator)) for s in self.settings for c in clean]
        self.out_dir, self.device = out_dir, device

    def score(self, model: Denoiser, step: int) -> float:
        model.eval()
        results: dict[str, list[tuple[float, float]]] = {s.label: [] for s in self.settings}
        with torch.no_grad():
            for setting, clean, noisy in self.cases:
                restored = model(noisy[None].to(self.device))[0].cpu()
                results[setting.label].append((psnr(restored, clean), ssim(restored, clean)))
        model.train()
        path = self.out_dir / VALIDATION_FILE
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "setting", "images", "psnr", "ssim"])
            for label, values in results.items():
                writer.writerow([step, label, len(values), f"{sum(v[0] for v in values) / len(values):.4f}",
                                 f"{sum(v[1] for v in values) / len(values):.5f}"])
        return sum(v[0] for values in results.values() for v in values) / sum(len(v) for v in results.values())


def _check(config: DenoiseConfig) -> None:
    unknown = [k for k in config.kinds if k not in KINDS]
    if unknown or not config.kinds:
        raise OptionError(f"unknown noise kind {', '.join(unknown) or '(none)'}; fix: use {', '.join(KINDS)}")
    if config.crop < 16:
        raise OptionError(f"--crop {config.crop} is smaller than the attention window; fix: --crop 64 or more")


def noisy_batch(clean: torch.Tensor, kinds: tuple[str, ...], generator: torch.Generator) -> tuple[torch.Tensor, list[Noise]]:
    """Each crop of [B, 3, H, W] with its own drawn noise: (noisy, the noises)."""
    noises = [draw_noise(kinds, generator) for _ in range(clean.shape[0])]
    noisy = torch.stack([noise.apply(image, generator) for noise, image in zip(noises, clean, strict=True)])
    return noisy, noises


def train_denoiser(config: DenoiseConfig, log: Callable[[str], None] = print) -> Denoiser:
    """Train (or resume) a restoration NAF; ``out_dir`` gets what ``train`` writes (``naf.safetensors``
    last), with the validation PSNR per setting in ``validation.csv``."""
    from naf_cli.checkpoints import load_denoiser

    _check(config)
    out_dir = Path(config.out_dir)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    excluded, validation_names = split_names(config.split, config.exclude)
    data = RandomCrops(Path(config.images), config.crop, excluded)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be there
    model = (load_denoiser(config.init, device=device) if config.init else Denoiser().to(device)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    run = TrainingRun(model, optimizer, torch.Generator().manual_seed(config.seed), out_dir, best=-float("inf"))
    run.resume(log)
    log(f"training a denoiser on {len(data.paths)} images from {config.images}, noise {', '.join(config.kinds)}, "
        f"{config.steps} steps")

    def metadata() -> dict[str, str]:
        return {"config": json.dumps(asdict(config)), "steps": str(run.step), "elapsed_s": f"{run.elapsed:.0f}",
                "noise": ",".join(config.kinds), "validation_best_psnr": f"{run.best:.4f}", "sessions": json.dumps(run.sessions_now())}

    def take_step(step: int) -> tuple[float, list[object]]:
        clean = data.batch(config.batch_size, run.generator)
        noisy, noises = noisy_batch(clean, config.kinds, run.generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            restored = model(noisy.to(device))
        loss = restoration_loss(restored.float(), clean.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item(), [";".join(n.label for n in noises)]

    validate = None
    if validation_names and config.validate_every > 0:
        photos = [Path(config.images) / n for n in validation_names if (Path(config.images) / n).is_file()]
        validator = DenoiseValidator(photos, config.kinds, out_dir, device)

        def validate() -> None:
            score = validator.score(model, run.step)
            if score > run.best:
                run.best = score
                save_denoiser(model, out_dir / BEST_FILE, metadata())
            log(f"step {run.step}: validation mean PSNR {score:.3f} dB (best {run.best:.3f})")
            draw_curves(None, out_dir / VALIDATION_FILE, out_dir / CURVE_FILE, "setting", "psnr", "validation PSNR, {}")
            draw_curves(out_dir / LOSS_FILE, None, out_dir / LOSS_CURVE_FILE)

    if run_steps(run, config.steps, config.checkpoint_every, take_step, ["noise"], log, validate, config.validate_every,
                 None if config.max_minutes is None else 60 * config.max_minutes, config.lr, config.lr_schedule):
        save_denoiser(model, out_dir / FINAL_FILE, metadata())
    return model.eval()
