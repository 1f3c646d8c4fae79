"""`naf eval`: quality measured by reconstruction, every method on the same photos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from naf_cli.cli.eval_probe import PROBE_COMPOSITES
from naf_cli.cli.options import BackbonePrecision, Device, Layer, VfmWeights
from naf_cli.defaults import DEFAULT_VFM

SPLIT_FILE = "photo-split.json"


def eval_(
    photos: Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).", show_default=False)],
    vfm: Annotated[str, typer.Option("--vfm", help="Backbone whose features are reconstructed (see `naf models`).")] = DEFAULT_VFM,
    task: Annotated[str, typer.Option("--task", help="upsample: the feature reconstruction protocol; probe: a linear "
                                      "segmentation probe on upsampled features of composites with exact labels (mIoU, "
                                      "accuracy near boundaries); denoise: PSNR and SSIM under fixed synthetic noise against "
                                      "tuned classical denoisers (docs/quality.md).")] = "upsample",
    factor: Annotated[Optional[list[int]], typer.Option("--factor", help="Upsampling factors, e.g. --factor 2 4 8. \\[default: "
                                                        "2 4 8; probe: 16]", show_default=False)] = None,
    checkpoint: Annotated[Optional[list[str]], typer.Option(
        "--checkpoint", help="NAF weights to score beside the default checkpoint: names of `naf models`, files or URLs "
        "(several allowed).")] = None,
    split: Annotated[str, typer.Option("--split", help="all photos, or the train or validation part of models/photo-split.json.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
    vfm_weights: VfmWeights = None,
    layer: Layer = None,
    backbone_precision: BackbonePrecision = "fp32",
    crop: Annotated[Optional[int], typer.Option("--crop", help="--task denoise: side of the central square of each photo "
                                                "(default 256); --task probe: side of each composite (default 448).",
                                                show_default=False)] = None,
    composites: Annotated[int, typer.Option("--composites", help="--task probe: composites to train the probe on, and as "
                                            "many to score it on.")] = PROBE_COMPOSITES,
    device: Device = "auto",
) -> None:
    """Score nearest, bilinear, bicubic, JBU, JBF, the untrained NAF, the NAF weights --checkpoint auto picks for
    the backbone (the "default" row) and others;
    with --task denoise, NAF denoisers against tuned classical denoisers.

    Per photo and factor f: the target is the backbone's features of the photo at f times a
    base size, the input its features at the base size; each method predicts the target
    from the input, guided by the large image. MSE and cosine, over all pixels and near
    strong edges of the image (docs/quality.md gives the sizes and the edge band).

    --task probe: composites of regions cut from different photos (each photo a class, labels
    exact); each method's upsampled features of them feed a linear classifier trained on
    composites of one half of every photo and scored on the other half's: mIoU, accuracy, and
    accuracy within half a low-resolution cell of a label boundary.
    """
    import json
    import sys

    from naf_cli.backbones import get_spec, load_backbone
    from naf_cli.cli.eval_probe import PROBE_FACTORS, PROBE_SIZE, check_probe_options, evaluate_probe_task
    from naf_cli.cli.progress import make_progress
    from naf_cli.devices import resolve_device
    from naf_cli.errors import OptionError
    from naf_cli.evaluation.pairs import BASE_CELLS, needed_short_side, short_sides
    from naf_cli.evaluation.protocol import evaluate

    if task == "denoise":
        from naf_cli.cli.eval_denoise import evaluate_denoise_task

        crop = 256 if crop is None else crop
        if crop < 16:
            raise OptionError(f"--crop {crop} is too small; fix: 64 or more")
        evaluate_denoise_task(select_photos(photos, split), split, list(checkpoint or []), resolve_device(device), crop, as_json)
        return
    if task not in ("upsample", "probe"):
        raise OptionError(f"--task {task} is not available; fix: use --task upsample, probe or denoise")
    factors = list(factor or (PROBE_FACTORS if task == "probe" else [2, 4, 8]))
    unknown = [f for f in factors if f not in BASE_CELLS]
    if unknown and task == "upsample":
        raise OptionError(f"--factor {unknown[0]} is not part of the protocol; fix: use {', '.join(map(str, BASE_CELLS))}")
    paths = select_photos(photos, split)
    target = resolve_device(device)
    spec = get_spec(vfm)
    if task == "probe":
        check_probe_options(paths, factors, composites, PROBE_SIZE if crop is None else crop, spec.patch_size)
    default = default_weights(vfm)  # before the backbone loads: a missing release is said first
    backbone = load_backbone(vfm, vfm_weights, target, layer, backbone_precision)
    methods = evaluation_methods(default, list(checkpoint or []), vfm, target)
    recorded = {"default_checkpoint": default[0] if default else None,
                "default_checkpoint_sha256": default[1] if default else None}
    if task == "probe":
        evaluate_probe_task(paths, split, vfm, backbone, methods, factors, composites, PROBE_SIZE if crop is None else crop,
                            as_json, recorded)
        return
    smallest = min(needed_short_side(f, backbone.info.patch_size) for f in factors)
    if max(short_sides(paths)) < smallest:
        _refuse_small(photos, factors, smallest)  # before any work, from the files' headers
    progress = make_progress()
    progress.start(len(paths), f"naf eval {vfm} x{'/'.join(map(str, factors))}")
    try:
        result = evaluate(paths, backbone, methods, factors, progress.advance)
    finally:
        progress.close()
    for f, names in result.too_small.items():
        if names:
            print(f"note: x{f} leaves out {len(names)} photo(s) smaller than its target: {', '.join(names)}", file=sys.stderr)
    scored = [score for score in result.scores if score.images > 0]
    if not scored:
        _refuse_small(photos, factors, smallest)
    if as_json:
        print(json.dumps({"vfm": vfm, "layer": backbone.info.layer, **recorded,
                          "photos": [p.name for p in paths], "split": split,
                          "scores": [score.as_dict() for score in scored]}, indent=1))
        return
    render(scored, sorted({score.factor for score in scored}, key=factors.index))


def _refuse_small(photos: Path, factors: list[int], smallest: int) -> None:
    from naf_cli.errors import OptionError

    raise OptionError(f"no photo in {photos} is large enough for x{'/'.join(map(str, factors))}: the smallest factor "
                      f"needs a short side of {smallest} pixels or more; fix: larger photos, or a smaller --factor")


def select_photos(folder: Path, split: str) -> list[Path]:
    """The photos of ``folder``, or those of one part of the committed split."""
    import json

    from naf_cli.errors import OptionError
    from naf_cli.package_files import package_file
    from naf_cli.pipeline.sources import list_images

    if not folder.is_dir():
        raise OptionError(f"{folder} is not a folder; fix: pass a folder of photos")
    paths = sorted(list_images(folder))
    if split == "all":
        chosen = paths
    elif split in ("train", "validation"):
        names = set(json.loads(package_file(SPLIT_FILE).read_text())[split])
        chosen = [p for p in paths if p.name in names]
    else:
        raise OptionError(f"--split {split} does not exist; fix: use all, train or validation")
    if not chosen and split == "all":
        raise OptionError(f"no photos in {folder}; fix: pass a folder of .jpg/.png photos")
    if not chosen:
        raise OptionError(f"none of the {split} photos of the shipped split (models/photo-split.json) is in {folder}; fix: "
                          f"--split all to evaluate on your own photos")
    return chosen


def default_weights(vfm: str) -> tuple[str, str] | None:
    """The name and SHA-256 of what ``--checkpoint auto`` picks for ``vfm`` (said on stderr), or
    None when it cannot be had (a release not fetched, offline): the row is then left out, with a note."""
    import sys

    from naf_cli.checkpoint_choice import resolve_auto
    from naf_cli.checkpoints import resolve_checkpoint
    from naf_cli.errors import WeightsError
    from naf_cli.weight_files import file_sha256

    try:
        name, choice = resolve_auto("auto", vfm)
    except WeightsError as err:
        print(f"note: the naf (default) row is left out: {err}", file=sys.stderr)
        return None
    assert name is not None and choice is not None
    print(choice.line(), file=sys.stderr)
    return name, file_sha256(resolve_checkpoint(name))


def evaluation_methods(default: tuple[str, str] | None, checkpoints: list[str], vfm: str, device: str) -> list:
    """nearest, bilinear, bicubic, jbu, jbf (the registry's), the untrained NAF, the ``default``
    weights (what ``auto`` picks for the backbone, unless they cannot be had) and each given
    checkpoint (``auto`` among them: resolved for ``vfm``)."""
    from naf_cli.checkpoint_choice import resolve_auto
    from naf_cli.evaluation.protocol import TRAINING_FREE, UNTRAINED_LABEL, Method, untrained_naf
    from naf_cli.upsamplers import load_upsampler

    methods = [Method(name, load_upsampler(name, device=device)[0]) for name in TRAINING_FREE]
    methods.append(Method(UNTRAINED_LABEL, untrained_naf().to(device)))
    if default is not None:
        methods.append(Method("naf (default)", load_upsampler("naf", default[0], device)[0]))
    for checkpoint in checkpoints:
        label = Path(checkpoint).name if Path(checkpoint).is_file() else checkpoint
        resolved, _ = resolve_auto(checkpoint, vfm)
        methods.append(Method(f"naf ({label})", load_upsampler("naf", resolved, device)[0]))
    return methods


def render(scores: list, factors: list[int]) -> None:
    """One table per factor: a row per method."""
    import math

    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for f in factors:
        rows = [s for s in scores if s.factor == f]
        table = Table("method", "MSE", "edge MSE", "cosine", "edge cosine", "seam", "variance",
                      title=f"x{f}: {rows[0].images} photos (MSE: lower is better; cosine: higher; seam: the step at "
                            f"cell boundaries over the target's, 1 = no grid; variance: the output's over the target's, "
                            f"below 1 = shrunk)")
        for score in rows:
            means = (score.mean(key) for key in ("mse", "edge_mse", "cosine", "edge_cosine", "seam", "variance"))
            table.add_row(score.method, *("-" if math.isnan(value) else f"{value:.4f}" for value in means))
        console.print(table)
