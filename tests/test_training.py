import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from naf_cli.checkpoints import load_naf
from naf_cli.cli.app import app
from naf_cli.training import TrainConfig, train
from naf_cli.training.steps import learning_rate


def safe_open_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata())

runner = CliRunner()


def small_config(examples_dir, out_dir, steps):
    return TrainConfig(images=str(examples_dir), out_dir=str(out_dir), steps=steps, batch_size=2, crop=64, checkpoint_every=1)


def test_resumed_training_equals_uninterrupted_training(tmp_path, examples_dir):
    straight = train(small_config(examples_dir, tmp_path / "straight", 3), log=lambda s: None)
    train(small_config(examples_dir, tmp_path / "resumed", 2), log=lambda s: None)
    # resume through the CLI, as a user would after an interruption
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "resumed"), "--steps", "3",
                                 "--batch-size", "2", "--crop", "64", "--checkpoint-every", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "resumed" in result.stderr and "at step 2" in result.stderr
    resumed = load_naf(tmp_path / "resumed" / "naf.safetensors")
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6)
    with open(tmp_path / "resumed" / "loss.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 for r in rows)


@pytest.mark.cuda
def test_training_resumes_on_cuda_in_bf16(tmp_path, examples_dir):
    """The saved random-number states are read back onto the CPU (they must be CPU byte tensors)."""
    from dataclasses import replace

    config = replace(small_config(examples_dir, tmp_path / "run", 1), device="cuda", bf16=True)
    train(config, log=lambda s: None)
    said = []
    model = train(replace(config, steps=2), log=said.append)
    assert any("at step 1" in line for line in said) and next(model.parameters()).is_cuda


def test_training_reduces_loss_on_a_fixed_batch(examples_dir):
    """A few steps on the same crops must lower the x2 loss: gradients flow through the attention."""
    from naf_cli.backbones import load_backbone
    from naf_cli.evaluation.pairs import feature_pair
    from naf_cli.modeling import NAF
    from naf_cli.training.data import RandomCrops

    torch.manual_seed(0)
    backbone = load_backbone("effnet-lite0")
    images = RandomCrops(examples_dir, crop=128).batch(2, torch.Generator().manual_seed(0))
    low, target = feature_pair(backbone, images, 2)
    model = NAF().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.mse_loss(model(images, low, (8, 8)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_second_stage_with_two_teachers_validates_and_keeps_the_best(tmp_path, examples_dir):
    """Teachers and factors are taken in turn; the validation photo is never drawn for training;
    validation rows, the best checkpoint and the curve picture are written."""
    from PIL import Image

    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["astronaut.jpg", "coffee.jpg", "rocket.jpg"], "validation": ["chelsea.jpg"]}))
    out = tmp_path / "run"
    config = TrainConfig(images=str(examples_dir), out_dir=str(out), extra_backbones=("effnet-lite1",), factors=(2, 4),
                         steps=4, batch_size=1, crop=128, checkpoint_every=2, split=str(split), validate_every=2,
                         validation_factors=(2,))
    logs: list[str] = []
    train(config, log=logs.append)
    assert "training on 3 images" in logs[0]  # examples/ has 4: the validation photo is held out
    with open(out / "loss.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["teacher"], r["factor"]) for r in rows] == [
        ("effnet-lite0", "2"), ("effnet-lite1", "2"), ("effnet-lite0", "4"), ("effnet-lite1", "4")]
    with open(out / "validation.csv") as handle:
        validation = list(csv.DictReader(handle))
    assert [(int(r["step"]), int(r["factor"]), int(r["images"])) for r in validation] == [(2, 2, 1), (4, 2, 1)]
    best = min(float(r["mse"]) for r in validation)
    load_naf(out / "best.safetensors")
    for name in ("best.safetensors", "naf.safetensors"):  # both record the run's best score, under a name that says so
        assert abs(float(safe_open_metadata(out / name)["validation_best_mse"]) - best) < 1e-4
    assert Image.open(out / "curves.png").size == (800, 420)


def test_train_options_belong_to_their_task(tmp_path, examples_dir):
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "r"), "--task", "restore"])
    assert result.exit_code == 2 and "--task restore is not available" in result.stderr
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "r"), "--noise", "gaussian"])
    assert result.exit_code == 2 and "--noise is for --task denoise" in result.stderr
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "r"), "--task", "denoise", "--factor", "4"])
    assert result.exit_code == 2 and "are for --task upsample" in result.stderr
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "r"), "--task", "denoise", "--noise", "speckle"])
    assert result.exit_code == 2 and "unknown noise kind speckle" in result.stderr
    assert not (tmp_path / "r").exists()


def test_max_minutes_stops_at_a_step_and_chunks_resume_to_the_uninterrupted_result(tmp_path, examples_dir):
    """GPU leases and sessions are time-limited: a run cut by --max-minutes into one-step chunks
    ends with the weights of the run that was never cut (the shared step loop, shown on --task denoise)."""
    args = ["train", str(examples_dir), "--task", "denoise", "--steps", "3", "--batch-size", "2", "--crop", "24",
            "--checkpoint-every", "10", "--device", "cpu", "--lr-schedule", "cosine"]
    straight = runner.invoke(app, [*args, "-o", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.stderr
    assert straight.stdout.strip() == str(tmp_path / "straight" / "naf.safetensors")
    chunked = tmp_path / "chunked"
    for call in range(1, 4):
        if call == 3:  # the run's folder moves, as a folder committed to a repository and cloned on another machine does
            moved = tmp_path / "clone" / "chunked"
            moved.parent.mkdir()
            shutil.copytree(chunked, moved)
            shutil.rmtree(chunked)
            chunked = moved
        result = runner.invoke(app, [*args, "-o", str(chunked), "--max-minutes", "1e-6"])
        assert result.exit_code == 0, result.stderr
        if call < 3:  # stopped after one step: state saved, no final weights, nothing on stdout
            assert f"stopped at step {call}/3" in result.stderr and "rerun the same command" in result.stderr
            assert result.stdout == "" and not (chunked / "naf.safetensors").exists()
        if call > 1:
            assert f"at step {call - 1}" in result.stderr
    assert result.stdout.strip() == str(chunked / "naf.safetensors")
    done = load_file(chunked / "naf.safetensors")
    for key, value in load_file(tmp_path / "straight" / "naf.safetensors").items():
        torch.testing.assert_close(done[key], value, rtol=0, atol=1e-6)
    assert len((chunked / "loss.csv").read_text().splitlines()) == 4  # header and steps 1-3, each once
    # every call is a session, recorded beside the state and in the final weights
    sessions = json.loads((chunked / "sessions.json").read_text())
    assert [(one["from_step"], one["to_step"]) for one in sessions] == [(0, 1), (1, 2), (2, 3)]
    assert all(one["cpu"] and one["torch"] == torch.__version__ and one["step_seconds"] >= 0 and "host" not in one
               for one in sessions)
    assert json.loads(safe_open_metadata(chunked / "naf.safetensors")["sessions"]) == sessions
    assert "(session 3)" in result.stderr
    final = safe_open_metadata(chunked / "naf.safetensors")
    again = runner.invoke(app, [*args, "-o", str(chunked), "--max-minutes", "1e-6"])  # nothing left: no session, same weights
    assert again.exit_code == 0 and json.loads((chunked / "sessions.json").read_text()) == sessions
    assert safe_open_metadata(chunked / "naf.safetensors") == final
    bad = runner.invoke(app, [*args, "-o", str(tmp_path / "bad"), "--max-minutes", "0"])
    assert bad.exit_code == 2 and "--max-minutes 0 must be positive" in bad.stderr
    bad = runner.invoke(app, [*args, "-o", str(tmp_path / "bad"), "--lr-schedule", "step"])
    assert bad.exit_code == 2 and "--lr-schedule step is unknown; fix: use constant or cosine" in bad.stderr
    # the schedule took effect: the last step ran at the cosine rate, not the constant one
    state = torch.load(chunked / "train_state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(learning_rate("cosine", 2e-4, 2, 3))


def test_cosine_schedule_runs_from_lr_to_zero():
    assert learning_rate("cosine", 1e-3, 0, 100) == 1e-3
    assert learning_rate("cosine", 1e-3, 50, 100) == pytest.approx(5e-4)
    assert learning_rate("cosine", 1e-3, 100, 100) == pytest.approx(0, abs=1e-12)
    assert learning_rate("constant", 1e-3, 77, 100) == 1e-3


@pytest.mark.parametrize("args,words", [
    (["--steps", "0"], "--steps must be at least 1, got 0; fix: e.g. --steps 600"),
    (["--steps", "-5"], "--steps must be at least 1, got -5"),
    (["--crop", "0"], "--crop must be at least 1, got 0; fix: e.g. --crop 512"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be a finite number above 0"),
    (["--validate-every", "-1"], "--validate-every must be 0 (never) or more"),
    (["--validation-factor", "2", "16"], "--validation-factor 16 is not part of naf eval's protocol; fix: use 2, 4, 8"),
])
def test_nonsense_training_options_are_refused_before_anything_is_written(tmp_path, examples_dir, args, words):
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and words in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()  # no untrained naf.safetensors


def test_a_validation_factor_no_validation_photo_fits_is_refused_before_anything_is_written(tmp_path, examples_dir):
    """x8 needs a 896-pixel short side (7 cells x 8 x 16); chelsea.jpg has 300: every x8 score would be nan,
    and no best weights would ever be kept. x2 needs 288 and fits."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["astronaut.jpg", "coffee.jpg", "rocket.jpg"], "validation": ["chelsea.jpg"]}))
    common = ["train", str(examples_dir), "--split", str(split), "--validate-every", "2", "--steps", "2",
              "--batch-size", "1", "--crop", "64", "--device", "cpu"]
    result = runner.invoke(app, [*common, "-o", str(tmp_path / "r"), "--validation-factor", "2", "8"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: --validation-factor 8: no validation photo has the short side of 896 pixels it needs (the largest has "
        "300); fix: leave 8 out of --validation-factor, or add larger photos to the split's validation list")
    assert not (tmp_path / "r").exists()
    fits = runner.invoke(app, [*common, "-o", str(tmp_path / "ok"), "--validation-factor", "2"])
    assert fits.exit_code == 0, fits.output
    assert (tmp_path / "ok" / "best.safetensors").is_file()


def test_the_relative_loss_is_the_mse_over_the_bilinear_mse_of_the_same_input():
    from naf_cli.training.loop import step_loss

    g = torch.Generator().manual_seed(0)
    low, target = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 12, 16, generator=g)
    prediction = torch.randn(2, 5, 12, 16, generator=g, requires_grad=True)
    # bilinear x4 by hand: output pixel centre (y + 0.5) / 4 - 0.5 in input cells, clamped at the borders
    def axis(n_in, n_out):
        pos = ((torch.arange(n_out) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        i0 = pos.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        w1 = pos - i0
        weights = torch.zeros(n_out, n_in)
        weights[torch.arange(n_out), i0] += 1 - w1
        weights[torch.arange(n_out), i1] += w1
        return weights
    bilinear = torch.einsum("yh,bchw,xw->bcyx", axis(3, 12), low, axis(4, 16))
    expected = ((prediction - target) ** 2).mean() / ((bilinear - target) ** 2).mean()
    got = step_loss(prediction, low, target, "relative")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(step_loss(prediction, low, target), ((prediction - target) ** 2).mean())
    got.backward()  # the bilinear term is a constant: the gradient is the MSE's, scaled
    scale = 1 / ((bilinear - target) ** 2).mean()
    torch.testing.assert_close(prediction.grad, 2 * (prediction - target).detach() / prediction.numel() * scale)


def test_training_with_the_relative_loss_records_it_and_unknown_losses_are_refused(tmp_path, examples_dir):
    common = ["train", str(examples_dir), "--steps", "2", "--batch-size", "1", "--crop", "64", "--device", "cpu"]
    bad = runner.invoke(app, [*common, "-o", str(tmp_path / "bad"), "--loss", "l1"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --loss l1 is unknown; fix: use mse or relative"
    assert not (tmp_path / "bad").exists()
    runs = {}
    for loss in ("relative", "mse"):
        done = runner.invoke(app, [*common, "-o", str(tmp_path / loss), "--loss", loss, "--factor", "2", "4"])
        assert done.exit_code == 0, done.output
        assert json.loads(safe_open_metadata(tmp_path / loss / "naf.safetensors")["config"])["loss"] == loss
        with open(tmp_path / loss / "loss.csv") as handle:
            runs[loss] = float(next(csv.DictReader(handle))["loss"])
    # the same first batch and weights: the relative loss is the MSE over the bilinear MSE (features: tens)
    assert runs["mse"] / runs["relative"] > 2


def test_a_split_whose_validation_photos_are_not_in_the_folder_is_refused_in_one_line(tmp_path, examples_dir):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["astronaut.jpg"], "validation": ["elsewhere.jpg", "gone.jpg"]}))
    result = runner.invoke(app, ["train", str(examples_dir), "-o", str(tmp_path / "r"), "--split", str(split),
                                 "--validate-every", "2", "--steps", "2", "--crop", "64", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: none of the 2 validation photos of {split} is in {examples_dir}; fix: pass the "
                                     "folder the split was made for, or --validate-every 0")
    assert not (tmp_path / "r").exists()
