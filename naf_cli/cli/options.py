"""Options shared by several commands, as Annotated aliases (no heavy imports here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from naf_cli.defaults import DEFAULT_NAF

Inputs = Annotated[
    Optional[list[Path]],
    typer.Argument(help="Image folders (searched recursively) and image files.", show_default=False),
]
Output = Annotated[Path, typer.Option("-o", "--output", help="HDF5 file to write.")]
Vfm = Annotated[str, typer.Option("--vfm", help="Backbone short name (see `naf models`).")]
VfmWeights = Annotated[
    Optional[Path],
    typer.Option("--vfm-weights", help="Local backbone weights file (offline use); default: the hub, or the packaged effnet-lite0."),
]
Layer = Annotated[
    Optional[int],
    typer.Option("--layer", help="Backbone feature layer: a ViT block or a CNN stage (effnet: 3 is stride 16, 4 stride 32); "
                 "negative counts from the last. \\[default: the last block; effnet: 3]", show_default=False),
]
BackbonePrecision = Annotated[
    str, typer.Option("--backbone-precision", help="fp32, or bf16 (bfloat16 autocast: for large ViTs on GPUs; features stored as usual)."),
]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")]
Checkpoint = Annotated[
    Optional[str],
    typer.Option("--checkpoint", help=f"NAF weights: auto (the official release weights for ViTs: dinov2*, dinov3*, siglip2*, "
                 f"radio*, timm ViTs; {DEFAULT_NAF} for EfficientNets and other CNNs), a name of `naf models` ({DEFAULT_NAF}, "
                 f"effnet-lite0, release), a file (.safetensors or .pth) or a URL (fetched once into the torch hub cache)."),
]
LongSide = Annotated[int, typer.Option("--long-side", help="Long side of the backbone input in pixels (sides rounded to the patch size).")]
Glob = Annotated[
    Optional[list[str]],
    typer.Option("--glob", help="Only files matching this pattern (repeatable); a pattern with / matches the path inside the folder."),
]
FilesFrom = Annotated[
    Optional[Path], typer.Option("--files-from", help="Text file of image paths, one a line (relative to the file's folder); - for stdin."),
]
ImageRoot = Annotated[
    Optional[Path],
    typer.Option("--image-root", help="With feature files as input: the photos' folder (default: each image's recorded source_path)."),
]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first input that cannot be read, instead of skipping it.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start again, deleting an existing output (otherwise a rerun resumes it).")]
OutDtype = Annotated[str, typer.Option("--out-dtype", help="Storage type: float16 (values beyond +-65504 keep float32) or float32.")]
Compression = Annotated[str, typer.Option("--compression", help="none, gzip (smaller, slower) or lzf (fast). See docs/format.md.")]
Workers = Annotated[
    Optional[int],
    typer.Option("--workers", help="Processes decoding images ahead of the model; 0 decodes inline. \\[default: cores - 1, at most 4]",
                 show_default=False),
]
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", help="Images per forward pass, batched among same-size images (try 8-32 on a GPU)."),
]
ShardImages = Annotated[
    Optional[int],
    typer.Option("--shard-images", help="Images per shard file at most (default: a shard every 30 s or more); smaller loses less on a crash."),
]
Shard = Annotated[
    Optional[str],
    typer.Option("--shard", help="I/N: do part I of N of the inputs (0 <= I < N), e.g. one per SLURM array task; parts may "
                 "share -o (the last to finish completes it) or write their own, joined by `naf merge`. Under torchrun, "
                 "ranks split the run without it.", show_default=False),
]
