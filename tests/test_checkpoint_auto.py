"""``--checkpoint auto``: the release weights for ViTs, the shipped weights for the rest, decided
by backbone, said once, recorded, compared on resume; offline without the release, one line.

Offline here: the release file is a state dict the test writes, placed in the torch hub cache
(``TORCH_HOME``), and the ViT is a DINOv2-S built from a weights file the test writes.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from naf_cli import checkpoints
from naf_cli.checkpoint_choice import RELEASE, choose_checkpoint, resolve_auto
from naf_cli.checkpoints import CHECKPOINTS, load_naf
from naf_cli.cli.app import app
from naf_cli.defaults import DEFAULT_NAF
from naf_cli.errors import OptionError
from naf_cli.modeling import NAF
from naf_cli.weight_files import file_sha256

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backbone", ["dinov2-s", "dinov2-r-b", "dinov3-b", "dinov3-7b", "siglip2-b", "radio-l",
                                      "timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224", "timm:eva02_tiny_patch14_224"])
def test_vits_get_the_release_weights(backbone):
    choice = choose_checkpoint(backbone)
    assert choice.checkpoint == RELEASE and "ViT" in choice.reason


@pytest.mark.parametrize("backbone", ["effnet-lite0", "effnet-lite2", "timm:tf_efficientnet_lite1", "timm:resnet18",
                                      "timm:convnext_atto", "timm:swin_tiny_patch4_window7_224", "my-own-backbone"])
def test_cnns_and_others_get_the_shipped_weights(backbone):
    choice = choose_checkpoint(backbone)
    assert choice.checkpoint == DEFAULT_NAF
    assert ("trained here on EfficientNet-Lite" in choice.reason) and (("does not know" in choice.reason) == (backbone == "my-own-backbone"))


def test_load_naf_without_arguments_keeps_the_shipped_weights_and_auto_needs_a_backbone():
    plain, shipped = load_naf(), load_naf(DEFAULT_NAF)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in shipped.state_dict().items())
    assert resolve_auto("effnet-lite0", "dinov3-b") == ("effnet-lite0", None)  # a named checkpoint is kept


@pytest.fixture()
def release_cache(tmp_path, monkeypatch) -> Path:
    """A release-format state dict (a plain .pth) in a fresh hub cache; the registry's URL points
    at a file that does not exist, so nothing is ever fetched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setitem(CHECKPOINTS, RELEASE, checkpoints.CheckpointEntry(
        RELEASE, "test", url=(tmp_path / "server" / "naf_release.pth").as_uri()))
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / "naf_release.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(11)
    torch.save(NAF().state_dict(), cached)
    return cached


@pytest.fixture(scope="module")
def dinov2_weights(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "dinov2_s.pth"
    torch.save(model.state_dict(), path)
    return path


def _upsample(inputs: Path, output: Path, *extra: str):
    return CliRunner().invoke(app, ["upsample", str(inputs), "-o", str(output), "--scale", "2", "--long-side", "112",
                                    "--workers", "0", *extra])


def test_a_vit_run_gets_the_release_weights_said_once_and_recorded(tmp_path, examples_dir, release_cache, dinov2_weights):
    vit = ["--vfm", "dinov2-s", "--vfm-weights", str(dinov2_weights)]
    auto = _upsample(examples_dir, tmp_path / "auto.h5", *vit)
    assert auto.exit_code == 0, auto.output
    assert auto.stderr.count("checkpoint auto: release for dinov2-s (a ViT") == 1
    explicit = _upsample(examples_dir, tmp_path / "file.h5", *vit, "--checkpoint", str(release_cache))
    assert explicit.exit_code == 0, explicit.output
    assert "checkpoint auto" not in explicit.stderr
    with h5py.File(tmp_path / "auto.h5") as a, h5py.File(tmp_path / "file.h5") as b:
        assert a.attrs["checkpoint"] == RELEASE and a.attrs["checkpoint_sha256"] == file_sha256(release_cache)
        names = sorted(a["features"])
        assert names == sorted(b["features"]) and len(names) == 4
        for name in names:  # the very weights of the release file, not the shipped ones
            assert np.array_equal(a["features"][name][()], b["features"][name][()])


def test_resume_compares_the_resolved_weights(tmp_path, examples_dir, release_cache, dinov2_weights):
    vit = ["--vfm", "dinov2-s", "--vfm-weights", str(dinov2_weights)]
    shipped = _upsample(examples_dir, tmp_path / "out.h5", *vit, "--checkpoint", DEFAULT_NAF)
    assert shipped.exit_code == 0, shipped.output
    rerun = _upsample(examples_dir, tmp_path / "out.h5", *vit)  # auto now picks the release weights
    assert rerun.exit_code == 2
    errors = [line for line in rerun.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "written with other NAF weights" in errors[0] and f"rerun with --checkpoint {DEFAULT_NAF}" in errors[0]
    same = _upsample(examples_dir, tmp_path / "out.h5", *vit, "--checkpoint", DEFAULT_NAF)
    assert same.exit_code == 0, same.output  # the fix the line gives resumes (here: nothing left to do)


def test_offline_without_the_release_is_one_line_and_writes_nothing(tmp_path, examples_dir, release_cache, dinov2_weights):
    release_cache.unlink()
    result = _upsample(examples_dir, tmp_path / "out.h5", "--vfm", "dinov2-s", "--vfm-weights", str(dinov2_weights))
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("error: --checkpoint auto picks release for dinov2-s: cannot fetch")
    assert f"--checkpoint {DEFAULT_NAF}" in lines[0] and str(release_cache.parent) in lines[0]
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
    shipped = _upsample(examples_dir, tmp_path / "out.h5", "--vfm", "dinov2-s", "--vfm-weights", str(dinov2_weights),
                        "--checkpoint", DEFAULT_NAF)
    assert shipped.exit_code == 0, shipped.output  # the fix the line gives works offline


def test_an_effnet_run_and_a_bilinear_run_need_no_release(tmp_path, examples_dir, release_cache):
    release_cache.unlink()  # effnet gets the shipped weights; bilinear no weights at all
    result = _upsample(examples_dir, tmp_path / "e.h5")
    assert result.exit_code == 0 and f"checkpoint auto: {DEFAULT_NAF} for effnet-lite0" in result.stderr
    with h5py.File(tmp_path / "e.h5") as f:
        assert f.attrs["checkpoint"] == DEFAULT_NAF
    plain = _upsample(examples_dir, tmp_path / "b.h5", "--vfm", "effnet-lite0", "--upsampler", "bilinear")
    assert plain.exit_code == 0 and "checkpoint auto" not in plain.stderr


def test_upsampling_an_extract_file_picks_by_its_backbone(tmp_path, examples_dir, release_cache, dinov2_weights):
    from naf_cli.datasets import UpsamplingDataset

    extract = CliRunner().invoke(app, ["extract", str(examples_dir), "-o", str(tmp_path / "lr.h5"), "--vfm", "dinov2-s",
                                       "--vfm-weights", str(dinov2_weights), "--long-side", "112", "--workers", "0"])
    assert extract.exit_code == 0, extract.output
    result = CliRunner().invoke(app, ["upsample", str(tmp_path / "lr.h5"), "-o", str(tmp_path / "hr.h5"), "--scale", "2",
                                      "--image-root", str(examples_dir)])
    assert result.exit_code == 0 and "checkpoint auto: release for dinov2-s" in result.stderr, result.output
    with h5py.File(tmp_path / "hr.h5") as f:
        assert f.attrs["checkpoint_sha256"] == file_sha256(release_cache)
    dataset = UpsamplingDataset(tmp_path / "lr.h5", image_root=examples_dir)
    dataset[0]
    assert dataset._upsample().info.checkpoint == RELEASE


def test_hubconf_gives_auto_weights_when_given_a_backbone(release_cache):
    release = torch.load(release_cache, weights_only=True)
    vit = torch.hub.load(str(REPO), "naf", source="local", trust_repo=True, backbone="dinov3-b")
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in release.items())
    cnn = torch.hub.load(str(REPO), "naf", source="local", trust_repo=True, backbone="effnet-lite0")
    shipped = load_naf(DEFAULT_NAF)
    assert all(torch.equal(cnn.state_dict()[k], v) for k, v in shipped.state_dict().items())


def test_naf_models_says_which_weights_each_backbone_gets():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 4}
    assert RELEASE in rows["dinov3-b"] and RELEASE in rows["siglip2-b"] and DEFAULT_NAF in rows["effnet-lite0"]
    assert "auto (the default of upsample, pca and eval) picks by backbone" in result.stdout


def test_naf_pca_picks_by_backbone(tmp_path, examples_dir, release_cache, dinov2_weights):
    result = CliRunner().invoke(app, ["pca", str(examples_dir / "chelsea.jpg"), "-o", str(tmp_path / "pca"), "--vfm", "dinov2-s",
                                      "--vfm-weights", str(dinov2_weights), "--long-side", "112", "--scale", "2"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("checkpoint auto: release for dinov2-s") == 1 and (tmp_path / "pca" / "chelsea.png").is_file()


def test_features_that_do_not_name_their_backbone_get_the_shipped_weights(tmp_path, examples_dir):
    extract = CliRunner().invoke(app, ["extract", str(examples_dir), "-o", str(tmp_path / "lr.h5"), "--long-side", "112",
                                       "--workers", "0"])
    assert extract.exit_code == 0, extract.output
    with h5py.File(tmp_path / "lr.h5", "r+") as f:  # written by another tool, say
        del f.attrs["backbone"]
    result = CliRunner().invoke(app, ["upsample", str(tmp_path / "lr.h5"), "-o", str(tmp_path / "hr.h5"), "--scale", "2",
                                      "--image-root", str(examples_dir)])
    assert result.exit_code == 0, result.output
    assert f"checkpoint auto: {DEFAULT_NAF} for features that do not name their backbone" in result.stderr
    with h5py.File(tmp_path / "hr.h5") as f:
        assert f.attrs["checkpoint"] == DEFAULT_NAF


def test_load_naf_with_a_backbone_is_auto(release_cache):
    release = torch.load(release_cache, weights_only=True)
    vit = load_naf(backbone="dinov2-s")
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in release.items())
    cnn, shipped = load_naf(backbone="timm:resnet18"), load_naf()
    assert all(torch.equal(cnn.state_dict()[k], v) for k, v in shipped.state_dict().items())
    named = load_naf("effnet-lite0", backbone="dinov2-s")  # a named checkpoint wins over the backbone
    assert all(torch.equal(named.state_dict()[k], v) for k, v in load_naf("effnet-lite0").state_dict().items())


def test_eval_leaves_out_a_default_it_cannot_have_and_resolves_auto_rows(release_cache, capsys):
    from naf_cli.cli.eval_cmd import default_weights, evaluation_methods

    release_cache.unlink()
    assert default_weights("dinov2-s") is None
    assert "note: the naf (default) row is left out: --checkpoint auto picks release for dinov2-s" in capsys.readouterr().err
    name, sha = default_weights("effnet-lite0")
    assert name == DEFAULT_NAF and sha == file_sha256(checkpoints.resolve_checkpoint(DEFAULT_NAF))
    methods = evaluation_methods(None, ["auto"], "effnet-lite0", "cpu")
    assert [m.name for m in methods][-2:] == ["naf (untrained)", "naf (auto)"]
    shipped = load_naf()
    assert all(torch.equal(methods[-1].upsampler.state_dict()[k], v) for k, v in shipped.state_dict().items())


def test_auto_where_no_backbone_can_say_is_refused_in_plain_words():
    with pytest.raises(OptionError, match=r"load_naf\('auto'\) picks weights by backbone; fix: pass backbone="):
        load_naf("auto")
    result = CliRunner().invoke(app, ["denoise", str(REPO / "examples" / "chelsea.jpg"), "--checkpoint", "auto"])
    assert result.exit_code == 2 and "--checkpoint auto picks upsampling weights by backbone and does not apply here" in result.stderr
