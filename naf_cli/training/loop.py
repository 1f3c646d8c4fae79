"""The release training recipe: x2 feature upsampling, plain MSE, AdamW; resumable."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from naf_cli.backbones import load_backbone
from naf_cli.checkpoints import save_naf
from naf_cli.evaluation.pairs import feature_pair
from naf_cli.modeling.naf import NAF
from naf_cli.training.data import RandomCrops

STATE_FILE = "train_state.pt"
LOSS_FILE = "loss.csv"


@dataclass
class TrainConfig:
    """One training run; the keys are exactly what ``naf train`` takes.

    The target is the backbone's features of a ``crop`` image; the input is its features of
    the same image downsampled by 2; the guidance is the ``crop`` image (NAF reduces it to
    4x the output size, 128 for a 512 crop at stride 16).
    """

    images: str
    out_dir: str
    backbone: str = "effnet-lite0"
    backbone_weights: str | None = None
    steps: int = 600
    batch_size: int = 4
    lr: float = 2e-4
    crop: int = 512
    checkpoint_every: int = 25
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    exclude: tuple[str, ...] = ()


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> NAF:
    """Train (or resume training of) a NAF; returns the model after ``config.steps`` steps.

    ``out_dir`` receives ``train_state.pt`` every ``checkpoint_every`` steps (weights,
    optimizer, data generator, so a resumed run continues the same sequence),
    ``loss.csv`` and, at the end, ``naf.safetensors``.
    """
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone, config.backbone_weights, device)
    data = RandomCrops(Path(config.images), config.crop, tuple(config.exclude))
    model = NAF().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0

    state_path = out_dir / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        log(f"resumed from {state_path} at step {step}")
    log(f"training on {len(data.paths)} images from {config.images}, backbone {backbone.info.name}, {config.steps} steps")

    patch = backbone.info.patch_size
    out_size = (config.crop // patch, config.crop // patch)
    with open(out_dir / LOSS_FILE, "a", newline="") as loss_file:
        writer = csv.writer(loss_file)
        if loss_file.tell() == 0:
            writer.writerow(["step", "loss", "elapsed_s"])
        while step < config.steps:
            started = time.perf_counter()
            images = data.batch(config.batch_size, generator).to(device)
            low, target = feature_pair(backbone, images, 2)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                prediction = model(images, low, out_size)
            loss = F.mse_loss(prediction.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - started
            writer.writerow([step, f"{loss.item():.6f}", f"{elapsed:.1f}"])
            loss_file.flush()
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save_state(state_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "step": step, "elapsed": elapsed,
                })
                log(f"step {step}/{config.steps}  loss {loss.item():.5f}  {elapsed:.0f}s")
    metadata = {"config": json.dumps(asdict(config)), "steps": str(step), "elapsed_s": f"{elapsed:.0f}",
                "backbone": backbone.info.name}
    save_naf(model, out_dir / "naf.safetensors", metadata)
    return model.eval()
