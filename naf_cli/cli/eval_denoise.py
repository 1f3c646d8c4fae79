"""`naf eval --task denoise`: NAF's restoration checkpoints against tuned classical denoisers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from naf_cli.evaluation.denoise_protocol import Restorer
    from naf_cli.evaluation.denoisers import Peer
    from naf_cli.evaluation.noise import Noise


def peer_restorer(peer: Peer) -> Restorer:
    """A peer with the parameter of each setting (BM3D: the true sigma of Gaussian noise)."""
    from naf_cli.evaluation.denoisers import peer_parameter

    def run(noisy: torch.Tensor, setting: Noise) -> torch.Tensor:
        return peer.run(noisy, peer_parameter(peer, setting.label, setting.sigma if setting.kind == "gaussian" else 0.0))
    return run


def evaluate_denoise_task(photos: list[Path], split: str, checkpoints: list[str], device: str, crop: int, as_json: bool) -> None:
    """Score the noisy input, the untrained NAF, the default denoiser, each given checkpoint and
    every installed peer on every setting; a Rich table per setting, or JSON."""
    import torch

    from naf_cli.checkpoints import CHECKPOINTS, DEFAULT_DENOISER, load_denoiser
    from naf_cli.cli.progress import make_progress
    from naf_cli.evaluation.denoise_protocol import evaluate_denoising, noisy_cases
    from naf_cli.evaluation.denoisers import BENCH_FIX, PEERS
    from naf_cli.modeling.restoration import Denoiser

    target = torch.device(device)

    def naf_restorer(model: Denoiser) -> Restorer:
        return lambda noisy, setting: model(noisy[None].to(target))[0].cpu()

    torch.manual_seed(0)
    methods: dict[str, Restorer] = {"noisy input": lambda noisy, setting: noisy}
    methods["naf (untrained)"] = naf_restorer(Denoiser().eval().to(target))
    for name in [DEFAULT_DENOISER, *[c for c in checkpoints if c != DEFAULT_DENOISER]]:
        label = Path(name).name if name not in CHECKPOINTS else name
        methods[f"naf ({label})"] = naf_restorer(load_denoiser(name, device=target))
    missing = [peer.name for peer in PEERS.values() if not peer.available]
    for peer in PEERS.values():
        if peer.available:
            methods[peer.name] = peer_restorer(peer)
    if missing:
        print(f"note: {', '.join(missing)} left out (not installed); fix: {BENCH_FIX}", file=sys.stderr)
    cases = noisy_cases(photos, crop=crop)
    progress = make_progress()
    progress.start(len(cases), f"naf eval --task denoise: {len(methods)} methods")
    try:
        scores = evaluate_denoising(cases, methods, progress.advance)
    finally:
        progress.close()
    if as_json:
        print(json.dumps({"photos": [p.name for p in photos], "split": split, "crop": crop, "scores": [
            {"method": s.method, "setting": s.setting, "images": len(s.psnr), "psnr": s.mean("psnr"),
             "ssim": s.mean("ssim"), "seconds_per_megapixel": s.seconds_per_megapixel} for s in scores]}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for setting in dict.fromkeys(s.setting for s in scores):
        rows = [s for s in scores if s.setting == setting]
        table = Table("method", "PSNR dB", "SSIM", "s / Mpx",
                      title=f"{setting}: {len(rows[0].psnr)} photos, central {crop} px (higher is better)")
        best = max(s.mean("psnr") for s in rows)
        for s in rows:
            mark = " *" if s.mean("psnr") == best else ""
            table.add_row(s.method, f"{s.mean('psnr'):.2f}{mark}", f"{s.mean('ssim'):.4f}", f"{s.seconds_per_megapixel:.2f}")
        console.print(table)
