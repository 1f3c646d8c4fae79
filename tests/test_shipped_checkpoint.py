"""The default checkpoint loads strictly and beats the training-free baselines at x2 on validation photos."""

import pytest
from safetensors import safe_open

from naf_cli.backbones import load_backbone
from naf_cli.checkpoints import load_naf, packaged_checkpoint


def test_shipped_checkpoint_loads_and_says_how_it_was_trained():
    path = packaged_checkpoint()
    assert (path.parent / "naf-effnet-lite0.md").is_file(), "every shipped checkpoint has a model card"
    load_naf(path)  # strict
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "effnet-lite0" and int(meta["steps"]) > 0


@pytest.mark.parametrize("photo", ["chelsea.jpg", "coffee.jpg"])  # validation photos of models/photo-split.json
def test_default_checkpoint_beats_bilinear_and_jbu_at_x2(examples_dir, photo):
    """naf eval's protocol at x2 (docs/quality.md): MSE and edge MSE at least 5% below the best of
    bilinear, JBU and JBF (their tuned sigmas), on photos the checkpoint never trained on."""
    from naf_cli.evaluation.protocol import Method, evaluate
    from naf_cli.upsamplers import load_upsampler

    methods = [Method(name, load_upsampler(name)[0]) for name in ("naf", "bilinear", "jbu", "jbf")]
    scores = {s.method: s for s in evaluate([examples_dir / photo], load_backbone("effnet-lite0"), methods, [2]).scores}
    for metric in ("mse", "edge_mse"):
        best_baseline = min(scores[name].mean(metric) for name in ("bilinear", "jbu", "jbf"))
        assert scores["naf"].mean(metric) < 0.95 * best_baseline, (metric, {k: v.mean(metric) for k, v in scores.items()})
