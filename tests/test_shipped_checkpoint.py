"""The default checkpoint loads strictly and beats the training-free baselines at x2 on validation photos."""

import json

import pytest
from safetensors import safe_open

from naf_cli.backbones import load_backbone
from naf_cli.checkpoints import CHECKPOINTS, load_denoiser, load_naf, packaged_checkpoint, resolve_checkpoint


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_every_shipped_checkpoint_loads_and_says_how_it_was_trained(name):
    entry = CHECKPOINTS[name]
    if not entry.file:
        pytest.skip(f"{name} is fetched, not shipped")
    path = packaged_checkpoint(entry.file)
    assert (path.parent / entry.card).is_file(), "every shipped checkpoint has a model card"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert int(meta["steps"]) > 0 and meta.get("task", "upsample") == entry.task
    if entry.task == "denoise":
        assert load_denoiser(name).naf.kernel_size == 15  # strict, architecture from the metadata
        assert json.loads(meta["config"])["split"].endswith("photo-split.json")  # trained on the training photos only
    else:
        load_naf(name)  # strict
        assert "effnet-lite0" in meta["backbone"].split(",")
    assert resolve_checkpoint(None) == packaged_checkpoint(CHECKPOINTS["effnet-lite0-lite1"].file)  # the default


@pytest.mark.parametrize("photo", ["chelsea.jpg", "coffee.jpg"])  # validation photos of models/photo-split.json
def test_default_checkpoint_beats_jbu_jbf_and_bilinear_at_x2(examples_dir, photo):
    """naf eval's protocol at x2 (docs/quality.md), on validation photos (the default
    checkpoint trained from scratch on the training photos only): MSE and edge MSE at least
    5% below JBU and JBF (tuned sigmas), and below bilinear."""
    from naf_cli.evaluation.protocol import Method, evaluate
    from naf_cli.upsamplers import load_upsampler

    methods = [Method(name, load_upsampler(name)[0]) for name in ("naf", "bilinear", "jbu", "jbf")]
    scores = {s.method: s for s in evaluate([examples_dir / photo], load_backbone("effnet-lite0"), methods, [2]).scores}
    for metric in ("mse", "edge_mse"):
        table = {name: score.mean(metric) for name, score in scores.items()}
        assert table["naf"] < 0.95 * min(table["jbu"], table["jbf"]) and table["naf"] < table["bilinear"], (metric, table)
