"""The checkpoint registry: names, URLs fetched once into the torch hub cache, architecture in
the file, and torch.hub entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from naf_cli.checkpoints import CHECKPOINTS, load_naf, resolve_checkpoint, save_naf
from naf_cli.errors import WeightsError
from naf_cli.modeling import NAF

REPO = Path(__file__).resolve().parents[1]


def test_release_download_path_loads_a_state_dict_written_by_the_test(tmp_path, monkeypatch):
    """`--checkpoint release` fetches the official file into the hub cache and loads it strictly,
    weights only. Here the official URL is replaced by a file:// URL of a state dict made here."""
    from naf_cli import checkpoints

    torch.manual_seed(3)
    published = NAF()
    source = tmp_path / "server" / "naf_release.pth"
    source.parent.mkdir()
    torch.save(published.state_dict(), source)  # the release is a plain state dict (.pth)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setitem(CHECKPOINTS, "release", checkpoints.CheckpointEntry("release", "test", url=source.as_uri()))
    loaded = load_naf("release")
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / "naf_release.pth"
    assert cached.is_file() and resolve_checkpoint("release") == cached
    for key, value in published.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    source.unlink()  # fetched once: the cache serves the next load
    load_naf("release")


def test_a_pickle_with_code_at_a_url_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    evil = tmp_path / "evil.pth"
    torch.save({"model": NAF().state_dict(), "extra": Path("x")}, evil)  # an object, not just tensors
    with pytest.raises(WeightsError, match="refused"):
        load_naf(evil.as_uri())


def test_an_unreachable_url_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError, match=r"cannot fetch .*fix: connect to the internet"):
        load_naf((tmp_path / "missing.pth").as_uri())


def test_a_checkpoint_carries_its_architecture(tmp_path):
    """A kernel-15, 2-head model saved here loads without flags."""
    model = NAF(kernel_size=15, num_heads=2, dim=128)
    save_naf(model, tmp_path / "k15.safetensors")
    loaded = load_naf(tmp_path / "k15.safetensors")
    assert loaded.architecture() == {"dim": 128, "num_heads": 2, "kernel_size": 15, "num_blocks": 2, "context_kernel": 3}
    image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(loaded(image, features, (16, 16)), model.eval()(image, features, (16, 16)))


def test_hubconf_gives_our_naf_with_our_weights():
    from naf_cli.defaults import DEFAULT_NAF

    hub = torch.hub.load(str(REPO), "naf", source="local", trust_repo=True)
    assert isinstance(hub, NAF)
    for key, value in load_naf(DEFAULT_NAF).state_dict().items():  # the default, as the CLI's
        assert torch.equal(hub.state_dict()[key], value)
    named = torch.hub.load(str(REPO), "naf", source="local", trust_repo=True, checkpoint="effnet-lite0")
    shipped = load_naf("effnet-lite0")
    assert all(torch.equal(named.state_dict()[key], value) for key, value in shipped.state_dict().items())
    assert any(not torch.equal(named.state_dict()[key], value) for key, value in hub.state_dict().items())  # two weights


def test_naf_models_lists_the_checkpoints_with_their_cards():
    from typer.testing import CliRunner

    from naf_cli.cli.app import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    for name in CHECKPOINTS:
        assert name in result.output
    assert "naf-effnet-lite0.md" in result.output
