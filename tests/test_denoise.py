"""`naf denoise` and the restoration variant: the shipped model against a tuned blur and the
untrained model on a validation photo, tiled equal to untiled, file round trips (sizes,
modes, bit depths, EXIF), bad inputs named and skipped, training, and `naf eval --task denoise`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from cli_runs import naf
from PIL import Image

from naf_cli.checkpoints import load_denoiser
from naf_cli.errors import WeightsError
from naf_cli.evaluation.denoise_protocol import central_crop
from naf_cli.evaluation.denoisers import PEERS, gaussian_blur, median_filter, tuned_parameters
from naf_cli.evaluation.image_quality import psnr, ssim
from naf_cli.evaluation.noise import Noise
from naf_cli.images import load_image, read_image
from naf_cli.modeling.restoration import Denoiser
from naf_cli.modeling.restoration_tiles import denoise_in_tiles, whole_image_bytes
from naf_cli.pipeline.image_sink import encode_png16
from naf_cli.pipeline.restore import restore, restore_batch
from naf_cli.training.denoise_loop import DenoiseConfig, noisy_batch, train_denoiser


@pytest.fixture(scope="module")
def shipped() -> Denoiser:
    return load_denoiser()


@pytest.fixture(scope="module")
def chelsea(examples_dir) -> torch.Tensor:
    """A validation photo (models/photo-split.json): the denoisers never trained on it."""
    return central_crop(load_image(examples_dir / "chelsea.jpg"), 128).contiguous()


def test_shipped_model_beats_a_tuned_blur_and_the_untrained_model_at_sigma_0_1(shipped, chelsea):
    setting = Noise("gaussian", sigma=0.1)
    noisy = setting.apply(chelsea, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    untrained = Denoiser().eval()
    with torch.no_grad():
        ours = psnr(shipped(noisy[None])[0], chelsea)
        raw = psnr(untrained(noisy[None])[0], chelsea)
    blur = max(psnr(gaussian_blur(noisy, s).clamp(0, 1), chelsea) for s in PEERS["gaussian-blur"].grid)
    assert ours > blur + 0.5 and ours > raw + 0.5, (ours, blur, raw)
    # and it restores: far above the noisy input (20 dB at sigma 0.1)
    assert ours > psnr(noisy, chelsea) + 6


def test_tiled_equals_untiled_and_bands_equal_the_whole(shipped, examples_dir):
    image = load_image(examples_dir / "coffee.jpg")[:, :75, :61][None].contiguous()
    with torch.no_grad():
        whole = shipped(image)
        bands = torch.cat([rows for _, _, rows in shipped.forward_bands(image, band_rows=16)], dim=2)
        tiles = list(denoise_in_tiles(shipped, image, band_rows=9))
    assert [(r0, r1) for r0, r1, _ in tiles][:2] == [(0, 9), (9, 18)] and tiles[-1][1] == 75
    torch.testing.assert_close(bands, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([rows for _, _, rows in tiles], dim=2), whole, atol=1e-5, rtol=0)


def test_batches_equal_images_restored_alone(shipped, examples_dir, tmp_path):
    rgb = load_image(examples_dir / "coffee.jpg")[:, :40, :52].contiguous()
    other = load_image(examples_dir / "chelsea.jpg")[:, :40, :52].contiguous()
    images = [rgb, other.mean(0, keepdim=True), torch.cat((other, torch.rand(1, 40, 52)))]  # RGB, grey, RGBA
    cpu, plenty = torch.device("cpu"), 2**34
    alone = [restore(shipped, image, cpu, plenty) for image in images]
    for budget in (plenty, whole_image_bytes(shipped, (40, 52), batch=2)):  # the second: too small for 3, one by one
        batched = restore_batch(shipped, images, cpu, budget)
        for got, expected in zip(batched, alone, strict=True):
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # through the CLI: same-size runs are batched, a size change starts a new batch
    folder = tmp_path / "in"
    folder.mkdir()
    for name, image in (("a.png", rgb), ("b.png", other), ("c.png", rgb[:, :33]), ("d.png", other[:, :33])):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / name)
    result = naf("denoise", str(folder), "-o", str(tmp_path / "out"), "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    for name in "abcd":
        pixels = load_image(folder / f"{name}.png")
        expected = (restore(shipped, pixels, cpu, plenty) * 255).round()
        got = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / f"{name}.png"), dtype=np.float32)).permute(2, 0, 1)
        assert (got - expected).abs().max() <= 1, name
    assert naf("denoise", str(folder), "--batch-size", "0").returncode == 2


def test_the_output_mixes_noisy_pixels_of_its_window(shipped):
    """Every output value is a convex combination of input values within 7 pixels (kernel 15)."""
    noisy = torch.zeros(1, 3, 40, 40)
    noisy[:, :, 20, 20] = 1.0
    with torch.no_grad():
        out = shipped(noisy)
    assert out.min() >= 0 and out.max() <= 1
    far = torch.ones(40, 40, dtype=torch.bool)
    far[13:28, 13:28] = False
    assert float(out[0][:, far].abs().max()) == 0.0


def test_upsample_and_denoise_checkpoints_refuse_each_other(tmp_path):
    with pytest.raises(WeightsError, match="holds upsample weights, not denoise weights; fix: use it with naf upsample"):
        load_denoiser("effnet-lite0-lite1")
    from naf_cli.checkpoints import load_naf

    with pytest.raises(WeightsError, match="holds denoise weights, not upsample weights; fix: use it with naf denoise"):
        load_naf("mixed")


def _exif_rotated_jpeg(path, examples_dir):
    """A JPEG stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    image = Image.open(examples_dir / "rocket.jpg").convert("RGB").resize((48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "naf-test-camera"
    image.save(path, quality=98, exif=exif.tobytes())
    return image


def test_naf_denoise_round_trips_modes_bit_depths_and_exif(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = Image.open(examples_dir / "chelsea.jpg").convert("RGB").resize((37, 29))
    rgb.save(folder / "colour.png")
    rgb.convert("L").save(folder / "grey.png")
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    rgba = rgb.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 37, dtype=np.uint8), (29, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "alpha.png")
    rgb16 = (np.asarray(rgb, dtype=np.uint16) * 257).astype(np.uint16)
    rgb16[..., 1] += 100  # low bytes that 8 bits would drop
    (folder / "rgb16.png").write_bytes(encode_png16(rgb16))
    _exif_rotated_jpeg(folder / "sideways.jpg", examples_dir)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)

    result = naf("denoise", str(folder))
    assert result.returncode == 3, result.stderr
    assert f"skipped: cannot read {folder / 'broken.png'}:" in result.stderr  # the line naf upsample says
    written = sorted(p.name for p in folder.glob("*.denoised.*"))
    assert written == ["alpha.denoised.png", "colour.denoised.png", "grey.denoised.png", "grey16.denoised.png",
                       "rgb16.denoised.png", "sideways.denoised.jpg"]
    assert sorted(result.stdout.split()) == sorted(str(folder / n) for n in written)

    expect = {"colour": ("RGB", (37, 29)), "grey": ("L", (37, 29)), "alpha": ("RGBA", (37, 29)), "sideways": ("RGB", (32, 48))}
    for stem, (mode, size) in expect.items():
        out = Image.open(next(folder.glob(f"{stem}.denoised.*")))
        assert (out.mode, out.size) == (mode, size), stem
    assert np.array_equal(np.asarray(Image.open(folder / "alpha.denoised.png"))[..., 3], alpha)
    sixteen = Image.open(folder / "grey16.denoised.png")
    assert sixteen.mode.startswith("I") and np.asarray(sixteen).max() > 255
    # 16 bits keep the precision the 8-bit file rounds away
    eight = np.asarray(Image.open(folder / "grey.denoised.png"), dtype=np.float64) / 255
    assert np.abs(np.asarray(sixteen, dtype=np.float64) / 65535 - eight).max() < 3 / 255
    header = (folder / "rgb16.denoised.png").read_bytes()[:26]
    assert (header[24], header[25]) == (16, 2)  # 16-bit RGB in, 16-bit RGB out
    deep = read_image(folder / "rgb16.denoised.png")[0].pixels
    assert deep.shape == (3, 29, 37) and ((deep * 65535).round() % 257 != 0).any()
    sideways = Image.open(folder / "sideways.denoised.jpg")
    exif = sideways.getexif()
    assert 0x0112 not in exif and exif[0x010F] == "naf-test-camera"

    # a rerun keeps what exists and does not take its own outputs as inputs
    again = naf("denoise", str(folder))
    assert again.returncode == 3 and again.stderr.count("kept ") == 6 and "denoised.denoised" not in again.stderr
    assert naf("denoise", str(folder), "--overwrite", "--glob", "colour.png").returncode == 0


def test_naf_denoise_runs_on_the_shared_loop_workers_and_strict(tmp_path, examples_dir):
    """Decoding workers change nothing in the files; --strict stops with the run loop's line."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.jpg", (40, 30)), ("c.png", (24, 36))):
        Image.open(examples_dir / "coffee.jpg").convert("RGB").resize(size).save(folder / name)
    inline = naf("denoise", str(folder), "-o", str(tmp_path / "inline"), "--workers", "0", "--device", "cpu")
    ahead = naf("denoise", str(folder), "-o", str(tmp_path / "ahead"), "--workers", "2", "--device", "cpu")
    assert inline.returncode == 0 and ahead.returncode == 0, inline.stderr + ahead.stderr
    for name in ("a.png", "b.jpg", "c.png"):
        assert (tmp_path / "inline" / name).read_bytes() == (tmp_path / "ahead" / name).read_bytes(), name
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    strict = naf("denoise", str(folder), "-o", str(tmp_path / "strict"), "--strict", "--workers", "0", "--device", "cpu")
    errors = [line for line in strict.stderr.splitlines() if line.startswith("error:")]
    assert strict.returncode == 1 and len(errors) == 1, strict.stderr
    assert f"cannot read {folder / 'broken.png'}" in errors[0] and "stopped by --strict" in errors[0]
    bad = naf("denoise", str(folder), "--workers", "-1")
    assert bad.returncode == 2 and "--workers must be 0 or more" in bad.stderr


def test_naf_denoise_keeps_the_second_of_two_inputs_with_one_output(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.open(examples_dir / "coffee.jpg").convert("RGB").resize((32, 24))
    photo.save(folder / "a.png")
    photo.save(folder / "a.webp")  # WebP cannot be written: its result would be a.png too
    result = naf("denoise", str(folder), "-o", str(tmp_path / "out"), "--workers", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "out" / "a.png")]
    assert f"kept {tmp_path / 'out' / 'a.png'}: an earlier input writes it, not {folder / 'a.webp'}" in result.stderr


def test_naf_denoise_output_options_and_errors(tmp_path, examples_dir):
    source = tmp_path / "cat.jpg"
    shutil.copy(examples_dir / "chelsea.jpg", source)
    Image.open(source).resize((40, 30)).save(source, quality=95)
    one = naf("denoise", str(source), "-o", str(tmp_path / "clean.png"))
    assert one.returncode == 0, one.stderr
    assert Image.open(tmp_path / "clean.png").size == (40, 30)
    assert "s per megapixel" in one.stderr
    repeat = naf("denoise", str(source), "-o", str(tmp_path / "clean.png"))
    assert repeat.returncode == 0 and "kept" in repeat.stderr and "--overwrite" in repeat.stderr
    missing = naf("denoise", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "nope.png does not exist" in missing.stderr and "Traceback" not in missing.stderr
    wrong = naf("denoise", str(source), "--checkpoint", "effnet-lite0")
    assert wrong.returncode == 2 and "holds upsample weights" in wrong.stderr
    same = naf("denoise", str(source), "-o", str(source), "--overwrite")
    assert same.returncode == 2 and "is the input itself" in same.stderr
    folder_out = naf("denoise", str(source), "-o", str(tmp_path / "outdir"))
    assert folder_out.returncode == 0 and (tmp_path / "outdir" / "cat.jpg").is_file()
    # a memory budget too small for the whole image: the banded path, the same pixels
    banded = naf("denoise", str(source), "-o", str(tmp_path / "banded.png"), "--max-memory", "1M")
    assert banded.returncode == 0, banded.stderr
    whole = np.asarray(Image.open(tmp_path / "clean.png"), dtype=np.int16)
    assert np.abs(np.asarray(Image.open(tmp_path / "banded.png"), dtype=np.int16) - whole).max() <= 1


def test_metrics_and_noise_are_the_plain_formulas(chelsea):
    noisy = Noise("gaussian", sigma=0.1).apply(chelsea, torch.Generator().manual_seed(0))
    mse = float((noisy.double() - chelsea.double()).square().mean())
    assert psnr(noisy, chelsea) == pytest.approx(10 * math.log10(1 / mse))
    skimage = pytest.importorskip("skimage.metrics")
    reference = skimage.structural_similarity(
        chelsea.permute(1, 2, 0).double().numpy(), noisy.permute(1, 2, 0).double().numpy(), channel_axis=-1,
        data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    # scikit-image averages over the valid interior too, after cropping (win_size - 1) / 2 = 5 pixels per side
    assert ssim(noisy, chelsea) == pytest.approx(reference, abs=2e-3)
    flat = torch.full((3, 200, 200), 0.5)
    hit = Noise("salt-pepper", p=0.3).apply(flat, torch.Generator().manual_seed(1))
    changed = (hit != 0.5).double().mean()
    assert abs(float(changed) - 0.3) < 0.01 and set(hit.unique().tolist()) == {0.0, 0.5, 1.0}
    spread = Noise("gaussian", sigma=0.05).apply(flat, torch.Generator().manual_seed(2)) - 0.5
    assert float(spread.std()) == pytest.approx(0.05, rel=0.03)


def test_median_and_blur_are_the_textbook_filters():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 9, 11, generator=g)
    med = median_filter(image, 3)
    padded = torch.nn.functional.pad(image[None], (1, 1, 1, 1), mode="reflect")[0]
    assert float(med[1, 4, 5]) == float(padded[1, 4:7, 5:8].flatten().median())
    constant = torch.full((3, 12, 12), 0.25)
    torch.testing.assert_close(gaussian_blur(constant, 1.5), constant)


def test_a_few_denoise_training_steps_lower_the_loss(tmp_path, examples_dir):
    config = DenoiseConfig(images=str(examples_dir), out_dir=str(tmp_path / "run"), steps=8, batch_size=2, crop=24,
                           checkpoint_every=4, lr=1e-3)
    model = train_denoiser(config, log=lambda line: None)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]]
    assert len(losses) == 8
    # the same noisy batch before and after: the trained weights restore it better
    from naf_cli.evaluation.image_quality import restoration_loss
    from naf_cli.training.data import RandomCrops

    crops = RandomCrops(examples_dir, 24).batch(4, torch.Generator().manual_seed(5))
    noisy, _ = noisy_batch(crops, ("gaussian",), torch.Generator().manual_seed(6))
    torch.manual_seed(config.seed)
    start = Denoiser().eval()
    with torch.no_grad():
        assert restoration_loss(model(noisy), crops) < restoration_loss(start(noisy), crops)
    saved = load_denoiser(tmp_path / "run" / "naf.safetensors")
    assert saved.naf.kernel_size == 15
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "naf.safetensors"), "pt") as handle:
        assert handle.metadata()["validation_best_psnr"] == "-inf"  # never validated: no best score yet
    torch.testing.assert_close(saved(noisy), model(noisy).detach())


def test_naf_eval_denoise_blur_row_matches_an_independent_computation(tmp_path, examples_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(examples_dir / "coffee.jpg", folder / "coffee.jpg")
    result = naf("eval", str(folder), "--task", "denoise", "--crop", "48", "--json")
    assert result.returncode == 0, result.stderr
    scores = {(s["method"], s["setting"]): s for s in json.loads(result.stdout)["scores"]}
    assert {s for _, s in scores} == {"gaussian 0.1", "gaussian 0.5", "salt-pepper 0.1", "salt-pepper 0.5", "mixed 0.1+0.1"}
    # recompute the tuned blur's PSNR at sigma 0.5 from the photo, with the protocol's seed rule written out
    clean = central_crop(load_image(folder / "coffee.jpg"), 48)
    generator = torch.Generator().manual_seed(0 * 1_000_003 + 1 * 1009 + 0)
    noisy = (clean + 0.5 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    blurred = gaussian_blur(noisy, tuned_parameters()[("gaussian-blur", "gaussian 0.5")]).clamp(0, 1)
    expected = 10 * math.log10(1 / float((blurred.double() - clean.double()).square().mean()))
    assert scores[("gaussian-blur", "gaussian 0.5")]["psnr"] == pytest.approx(expected, abs=1e-6)
    assert scores[("noisy input", "gaussian 0.5")]["psnr"] < scores[("naf (mixed)", "gaussian 0.5")]["psnr"]


def test_naf_denoise_write_failures_are_one_line_with_the_right_exit_code(tmp_path, examples_dir):
    import resource
    import socket
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.png", (40, 30)), ("c.png", (600, 600))):
        Image.open(examples_dir / "coffee.jpg").convert("RGB").resize(size).save(folder / name)
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    existing = naf("denoise", str(folder / "a.png"), "-o", str(notes))  # one input, -o an existing non-image file
    assert existing.returncode == 2 and "is an existing file" in existing.stderr and "fix:" in existing.stderr
    assert len(existing.stderr.strip().splitlines()) == 1 and notes.read_text() == "precious"
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".a.png.tmp-{socket.gethostname()}-999999999"  # left by a killed write (no such process)
    stale.write_bytes(b"half")

    def limit() -> None:  # writes past 100 kB fail (EFBIG), like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    full = subprocess.run([sys.executable, "-m", "naf_cli", "denoise", str(folder), "-o", str(out)], capture_output=True,
                          text=True, timeout=600, preexec_fn=limit)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 1 and len(errors) == 1 and "c.png" in errors[0] and "free disk space" in errors[0], full.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # finished outputs kept, no temporary left
