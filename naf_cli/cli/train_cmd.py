"""`naf train`: the release recipe on any image folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from naf_cli.cli.options import Device, Vfm, VfmWeights
from naf_cli.defaults import DEFAULT_VFM


def train(
    images: Annotated[Path, typer.Argument(help="Folder of training photos.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Folder for train_state.pt, loss.csv and naf.safetensors; rerun to resume.")],
    vfm: Vfm = DEFAULT_VFM,
    vfm_weights: VfmWeights = None,
    steps: Annotated[int, typer.Option(help="Total optimiser steps.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    crop: Annotated[Optional[int], typer.Option(
        help="Square crop side (upsample: inputs come from the crop downscaled) \\[default: 512; denoise: 64]",
        show_default=False)] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between resumable checkpoints.")] = 25,
    seed: Annotated[int, typer.Option(help="Seed of the crops and the initialisation.")] = 0,
    exclude: Annotated[Optional[list[str]], typer.Option(help="File name to hold out (repeatable).")] = None,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (GPUs, and CPUs with AVX512-BF16 or AMX).")] = False,
    also_vfm: Annotated[Optional[list[str]], typer.Option(
        "--also-vfm", help="More teacher backbones, taken in turn with --vfm (e.g. --also-vfm effnet-lite1).")] = None,
    factor: Annotated[Optional[list[int]], typer.Option(
        "--factor", help="Input downscaling factors, taken in turn (e.g. --factor 2 4: the second stage). \\[default: 2]",
        show_default=False)] = None,
    split: Annotated[Optional[Path], typer.Option(
        "--split", help="JSON with train and validation file lists (e.g. models/photo-split.json): train on the first, "
        "validate on the second.")] = None,
    validate_every: Annotated[int, typer.Option(help="Steps between validations with naf eval's protocol (0: never).")] = 0,
    validation_factor: Annotated[Optional[list[int]], typer.Option(
        "--validation-factor", help="Factors of naf eval's protocol the validation scores (2, 4 or 8; e.g. "
        "--validation-factor 2 4 8). \\[default: 2 4]", show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from these NAF weights (a new run only).")] = None,
    lr_schedule: Annotated[str, typer.Option(
        "--lr-schedule", help="constant, or cosine: from --lr down to 0 at the last step (a function of the step, "
        "so resuming is exact).")] = "constant",
    loss: Annotated[str, typer.Option(
        "--loss", help="mse (the paper's), or relative: the MSE over that of bilinear upsampling of the same input, "
        "so every --factor weighs alike.")] = "mse",
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", help="Stop after this much wall time (at a step, state saved) and resume on the next run: "
        "for time-limited sessions and GPU leases. The final weights' path is printed once every step is done.",
        show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", help="upsample: feature reconstruction; denoise: the restoration "
                                      "variant (kernel 15) on synthetic noise.")] = "upsample",
    noise: Annotated[Optional[list[str]], typer.Option(
        "--noise", help="--task denoise: noise kinds drawn in turn: gaussian, salt-pepper, mixed. \\[default: all three]",
        show_default=False)] = None,
    device: Device = "auto",
) -> None:
    """Train NAF by feature reconstruction (MSE, AdamW), or as a denoiser; resumes from OUT_DIR/train_state.pt.

    Each call is a session (OUT_DIR/sessions.json). To survive a change of machine, keep
    OUT_DIR in the repository (training-runs/NAME) and commit it at the end of a session.
    """
    from naf_cli.devices import resolve_device
    from naf_cli.errors import OptionError
    from naf_cli.training import TrainConfig

    for name, value, example in (("--steps", steps, 600), ("--batch-size", batch_size, 4), ("--crop", crop, 512),
                                 ("--checkpoint-every", checkpoint_every, 25)):
        if value is not None and value < 1:
            raise OptionError(f"{name} must be at least 1, got {value}; fix: e.g. {name} {example}")
    if not lr > 0 or lr == float("inf"):
        raise OptionError(f"--lr must be a finite number above 0, got {lr}; fix: e.g. --lr 2e-4")
    if validate_every < 0:
        raise OptionError(f"--validate-every must be 0 (never) or more, got {validate_every}; fix: e.g. --validate-every 250")
    if max_minutes is not None and max_minutes <= 0:
        raise OptionError(f"--max-minutes {max_minutes:g} must be positive; fix: e.g. --max-minutes 9")
    from naf_cli.disk import check_writable
    from naf_cli.training.steps import LR_SCHEDULES

    check_writable(out_dir)

    if lr_schedule not in LR_SCHEDULES:
        raise OptionError(f"--lr-schedule {lr_schedule} is unknown; fix: use {' or '.join(LR_SCHEDULES)}")
    if task not in ("upsample", "denoise"):
        raise OptionError(f"--task {task} is not available; fix: use --task upsample or --task denoise")
    if task == "denoise":
        from naf_cli.training.denoise_loop import DenoiseConfig, train_denoiser

        if also_vfm or factor or validation_factor or vfm_weights or vfm != DEFAULT_VFM or loss != "mse":
            raise OptionError("--vfm, --vfm-weights, --also-vfm, --factor, --validation-factor and --loss are for --task "
                              "upsample; fix: leave them out")
        denoise = DenoiseConfig(
            images=str(images), out_dir=str(out_dir), kinds=tuple(noise or DenoiseConfig.kinds), steps=steps,
            batch_size=batch_size, lr=lr, crop=crop or 64, checkpoint_every=checkpoint_every, seed=seed,
            device=resolve_device(device), bf16=bf16, exclude=tuple(exclude or ()),
            split=str(split) if split else None, validate_every=validate_every, init=str(init) if init else None,
            max_minutes=max_minutes, lr_schedule=lr_schedule,
        )
        train_denoiser(denoise, log=lambda line: print(line, file=sys.stderr))
        _report(out_dir, steps)
        return
    if noise:
        raise OptionError("--noise is for --task denoise; fix: add --task denoise or leave --noise out")
    from naf_cli.training import train as run_training

    config = TrainConfig(
        images=str(images), out_dir=str(out_dir), backbone=vfm,
        backbone_weights=str(vfm_weights) if vfm_weights else None, steps=steps, batch_size=batch_size,
        lr=lr, crop=crop or 512, checkpoint_every=checkpoint_every, seed=seed, device=resolve_device(device),
        bf16=bf16, exclude=tuple(exclude or ()), extra_backbones=tuple(also_vfm or ()), factors=tuple(factor or (2,)),
        split=str(split) if split else None, validate_every=validate_every, init=str(init) if init else None,
        max_minutes=max_minutes, lr_schedule=lr_schedule,
        validation_factors=tuple(validation_factor or TrainConfig.validation_factors), loss=loss,
    )
    run_training(config, log=lambda line: print(line, file=sys.stderr))
    _report(out_dir, steps)


def _report(out_dir: Path, steps: int) -> None:
    """The final weights' path on stdout once every step is done (a run stopped by --max-minutes prints nothing)."""
    from naf_cli.training.steps import FINAL_FILE, saved_step

    if saved_step(out_dir) >= steps:
        print(Path(out_dir) / FINAL_FILE)
