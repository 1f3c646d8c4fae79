"""Every odd input through the real `naf` command in a subprocess, read back with plain h5py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from cli_runs import NAF, naf
from feature_files import dataset_names
from odd_inputs import make_odd_folder


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory, examples_dir):
    folder = tmp_path_factory.mktemp("odd") / "inputs"
    good, skipped = make_odd_folder(folder, examples_dir / "chelsea.jpg")
    out = folder.parent / "odd.h5"
    result = naf("upsample", str(folder), "-o", str(out), "--scale", "2", "--long-side", "224", "--device", "cpu")
    return folder, good, skipped, out, result


def test_odd_folder_finishes_with_exit_3_and_every_decodable_input(odd_run):
    folder, good, skipped, out, result = odd_run
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(out, "r") as f:
        names = set(dataset_names(f["features"]))
        assert names == good
        for name in good:
            data = f["features"][name]
            assert data.shape[0] == 112 and np.isfinite(data[()].astype(np.float32)).all(), name
        names, reasons = list(f.attrs["skipped_images"]), list(f.attrs["skipped_reasons"])
        assert len(names) == len(reasons) and all(isinstance(n, str) and r.strip() for n, r in zip(names, reasons, strict=True))
        recorded = dict(zip(names, reasons, strict=True))
        assert set(recorded) == skipped
        assert f.attrs["images_done"] == len(good) and f.attrs["images_skipped"] == len(skipped)
    # loops are not followed: nothing was found twice through sub/loop
    assert not any(name.startswith("sub/loop") for name in names)


def test_each_skipped_input_is_one_whole_line_naming_its_full_path(odd_run):
    folder, good, skipped, out, result = odd_run
    lines = result.stderr.splitlines()
    for name in skipped:
        matching = [line for line in lines if line.startswith("skipped:") and str(folder / name) in line]
        assert len(matching) == 1, (name, result.stderr)
        assert "fix:" in matching[0]
    reasons = "\n".join(lines)
    assert "empty (0 bytes)" in reasons and "broken symbolic link" in reasons and "is a directory" in reasons
    assert "decompression bomb" in reasons and "not an image format" in reasons and "truncated or corrupt" in reasons


def test_summary_warnings_and_notes(odd_run):
    folder, good, skipped, out, result = odd_run
    stderr = result.stderr
    assert f"{len(skipped)} of {len(good) + len(skipped)} input(s) skipped" in stderr
    assert "done" in stderr and f"{len(good)} of {len(good) + len(skipped)}" in stderr and "images/s" in stderr
    assert "peak memory" in stderr
    assert stderr.count("animated images use their first frame") == 1
    assert any("panorama_20000x300.jpg: extreme aspect ratio" in line for line in stderr.splitlines())
    assert f"wrote {len(good)} image(s)" in result.stdout


def test_sizes_of_tiny_and_thin_inputs(odd_run):
    folder, good, skipped, out, result = odd_run
    with h5py.File(out, "r") as f:
        # the long side becomes --long-side (224): 1x1 -> 224x224 backbone input -> 14x14 grid -> 28x28
        assert f["features/tiny_1x1.png"].shape == (112, 28, 28)
        # the short side is at least one patch: 1 row -> 16 rows -> one cell -> 2 rows at --scale 2
        assert f["features/line_1x500.png"].shape == (112, 2, 28)
        assert f["features/line_500x1.png"].shape == (112, 28, 2)
        assert tuple(f["features/rotated_exif.jpg"].attrs["source_size"]) == (451, 300)  # upright: H > W
        assert f["features/deep16.png"].attrs["source_bit_depth"] == 16
        assert f["features/animated.gif"].attrs["source_frames"] == 2


def test_strict_stops_at_the_first_bad_input(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bad.jpg").write_bytes(b"nope")
    (folder / "b_good.jpg").write_bytes((examples_dir / "coffee.jpg").read_bytes())
    out = tmp_path / "o.h5"
    result = naf("upsample", str(folder), "-o", str(out), "--upsampler", "bilinear", "--strict", "--device", "cpu")
    assert result.returncode == 1, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(folder / "a_bad.jpg") in error_lines[0] and "--strict" in error_lines[0]
    assert not out.exists()


def test_progress_in_a_log_file_is_plain_whole_lines(tmp_path, examples_dir):
    out = tmp_path / "o.h5"
    long_name = "a-very-long-file-name-" + "x" * 150 + ".jpg"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / long_name).write_bytes((examples_dir / "coffee.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(b"")
    with open(tmp_path / "log.txt", "w") as log:
        code = subprocess.run([*NAF, "upsample", str(folder), "-o", str(out), "--upsampler", "bilinear", "--device", "cpu"],
                              stderr=log, stdout=subprocess.DEVNULL, timeout=600).returncode
    text = (tmp_path / "log.txt").read_text()
    assert code == 3
    assert "\r" not in text and "\x1b[" not in text  # no redraws, no colour codes
    assert any(line.startswith("[1/2] 50%") and line.endswith(long_name) for line in text.splitlines()), text
    assert any(line.startswith("[2/2] 100%") for line in text.splitlines()), text
    assert any(line.startswith("skipped:") and line.rstrip().endswith("re-encode or remove the file") for line in text.splitlines())


def test_interrupt_exits_130_with_one_line(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:02d}.jpg").write_bytes((examples_dir / "coffee.jpg").read_bytes())
    process = subprocess.Popen([*NAF, "upsample", str(folder), "-o", str(tmp_path / "o.h5"), "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # wait until work has started
        if line.startswith("[1/30]"):
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130
    assert "error: interrupted" in rest and "Traceback" not in rest
    with h5py.File(tmp_path / "o.h5", "r") as f:  # what was finished is kept, marked incomplete
        assert not f.attrs["complete"] and len(dataset_names(f["features"])) < 30


def test_files_from_and_glob(tmp_path, examples_dir):
    folder = tmp_path / "in"
    (folder / "keep").mkdir(parents=True)
    for name in ("keep/a.jpg", "keep/b.png", "c.jpg"):
        (folder / name).write_bytes((examples_dir / "coffee.jpg").read_bytes())
    out = tmp_path / "g.h5"
    result = naf("extract", str(folder), "--glob", "*.jpg", "-o", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f["features"]["keep"]) == ["a.jpg"] and "c.jpg" in f["features"]
    listing = tmp_path / "list.txt"
    listing.write_text("# chosen\nin/keep/b.png\n\nin/c.jpg\nin/missing.jpg\n")
    out = tmp_path / "l.h5"
    result = naf("extract", "--files-from", str(listing), "-o", str(out), "--device", "cpu")
    assert result.returncode == 3, result.stderr
    assert "missing.jpg" in result.stderr
    with h5py.File(out, "r") as f:  # names are relative to the deepest folder holding every input
        assert sorted(f["features"]) == ["c.jpg", "keep"] and list(f["features/keep"]) == ["b.png"]


def test_help_and_version_do_not_import_torch():
    commands = [["--help"], ["--version"]] + [[c, "--help"] for c in ("extract", "upsample", "info", "train", "env", "models")]
    code = (
        "import sys\n"
        "from naf_cli.cli.app import app\n"
        f"for args in {commands!r}:\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'h5py', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout[-500:]


@pytest.mark.parametrize("args,words", [
    (["--scale", "nan"], "--scale must be a finite number above 0"),
    (["--scale", "inf"], "--scale must be a finite number above 0"),
    (["--scale", "0"], "--scale must be a finite number above 0"),
    (["--scale", "-2"], "--scale must be a finite number above 0"),
    (["--long-side", "0"], "--long-side must be a finite number above 0, got 0; fix: pass e.g. --long-side 448"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0; fix: --batch-size 1"),
    (["--workers", "-1"], "--workers must be 0 or more, got -1; fix: e.g. --workers 2"),
    (["--max-memory", "abc"], "got 'abc'; fix: e.g. --max-memory 8G"),
    (["--shard-images", "0"], "--shard-images must be at least 1, got 0; fix: e.g. --shard-images 100"),
    (["--output-size", "0x5"], "fix: e.g. --output-size 448x448"),
    (["--long-side", "-5"], "--long-side must be a finite number above 0"),
    (["--scale", "1000"], "a smaller --scale"),
    (["--output-size", "12xq"], "--output-size must be grid, image or HxW"),
    (["--output-size", "image", "--scale", "4"], "--scale applies to --output-size grid"),
    (["--device", "mps"], "MPS (Apple GPU) is not available"),
    (["--device", "tpu9"], "unknown device"),
    (["--vfm", "dinov9"], "known backbones"),
    (["--upsampler", "lanczos"], "known upsamplers"),
])
def test_bad_options_fail_before_any_work(tmp_path, examples_dir, args, words):
    out = tmp_path / "o.h5"
    started = time.monotonic()
    result = naf("upsample", str(examples_dir), "-o", str(out), *args, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no index, shard folder or lock file
    assert time.monotonic() - started < 120


def test_output_that_is_a_folder_is_refused_even_with_overwrite(tmp_path, examples_dir):
    result = naf("upsample", str(examples_dir), "-o", str(tmp_path), "--overwrite")
    assert result.returncode == 2 and "is a folder" in result.stderr


def test_corrupt_and_foreign_weight_files_say_what_they_are(tmp_path, examples_dir):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "random.safetensors").write_bytes(os.urandom(64))
    (tmp_path / "image.pth").write_bytes((examples_dir / "coffee.jpg").read_bytes())
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(3)}, str(good))
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-5])
    model = {f"image_encoder.encoder.{i}.weight": torch.zeros(2, 2) for i in range(5)}
    torch.save(model, tmp_path / "other.pth")
    cases = [
        (["--checkpoint", str(tmp_path / "image.pth")], "not a weights file (it starts with b'\\xff\\xd8"),
        (["--checkpoint", str(tmp_path / "cut.safetensors")], "truncated safetensors file"),
        (["--checkpoint", str(tmp_path / "other.pth")], "unexpected key(s)"),
        (["--vfm", "dinov2-s", "--vfm-weights", str(tmp_path / "random.safetensors"), "--checkpoint", "effnet-lite0-lite1"],
         "cannot read dinov2-s weights"),
        (["--vfm-weights", str(tmp_path / "other.pth")], "missing key(s)"),
    ]
    for args, words in cases:
        result = naf("upsample", str(examples_dir / "coffee.jpg"), "-o", str(tmp_path / "o.h5"), *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert words in lines[0] and "fix:" in lines[0], (args, lines[0])


def test_a_closed_stdout_ends_quietly():
    """`naf models | head -1`: the reader goes away; no traceback, no error line."""
    process = subprocess.Popen([sys.executable, "-m", "naf_cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "BrokenPipe" not in stderr and "Traceback" not in stderr and "error" not in stderr


def test_every_default_written_in_an_option_help_is_shown():
    """Help text is Rich markup: an unescaped ``[default: ...]`` would vanish as an unknown tag."""
    import re

    import typer.main
    from typer.testing import CliRunner

    from naf_cli.cli.app import app

    group = typer.main.get_command(app)
    checked = 0
    for name, command in group.commands.items():
        wanted = [re.sub(r"\\\[", "[", p.help) for p in command.params if getattr(p, "help", None) and "[default:" in p.help]
        if not wanted:
            continue
        shown = " ".join(CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "400"}).output.replace("│", " ").split())
        for text in wanted:
            default = text[text.index("[default:"):text.index("]", text.index("[default:")) + 1]
            assert " ".join(default.split()) in shown, (name, default)
            checked += 1
    assert checked >= 8


def test_eval_on_a_folder_without_the_split_photos_says_what_to_do(tmp_path, examples_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = naf("eval", str(empty), "--split", "all")
    assert result.returncode == 2 and "no photos in" in result.stderr and "fix:" in result.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my-photo.jpg").write_bytes((examples_dir / "rocket.jpg").read_bytes())  # a name the split does not hold
    result = naf("eval", str(mine), "--split", "validation")
    assert result.returncode == 2 and "--split all" in result.stderr and "shared" not in result.stderr, result.stderr


def test_a_fifo_named_like_an_image_is_skipped_never_opened(tmp_path, examples_dir):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(examples_dir / "coffee.jpg").resize((48, 32)).save(folder / "small.png")
    os.mkfifo(folder / "x.png")  # opening it for reading would block until a writer comes: forever
    for args in (["extract", str(folder), "-o", str(tmp_path / "a.h5")],
                 ["extract", str(folder / "x.png"), str(folder / "small.png"), "-o", str(tmp_path / "b.h5")],
                 ["denoise", str(folder), "-o", str(tmp_path / "out")]):
        result = naf(*args, timeout=300)
        assert result.returncode == 3, (args, result.stderr)
        assert f"{folder / 'x.png'}: it is a named pipe (FIFO), not a regular file; fix:" in result.stderr


@pytest.mark.parametrize("args,words", [
    (["pca", "photo.png"], "error: Missing option '-o' / '--output'; fix: see "),
    (["upsample", "x", "--scale", "abc"], "error: Invalid value for '--scale'"),
    (["upsample", "x", "--bogus"], "error: No such option: --bogus; fix: see "),
    (["nosuch"], "error: No such command 'nosuch'; fix: see "),
    (["bench", "--ratio", "abc"], "error: Invalid value for '--ratio'"),
])
def test_usage_errors_the_parser_finds_are_one_line_too(args, words):
    result = naf(*args, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr
    command = "" if args[0] == "nosuch" else f" {args[0]}"
    assert lines[0].endswith(f"naf_cli{command} --help"), lines[0]  # run here as `python -m naf_cli`
    assert "╭" not in result.stderr and "Traceback" not in result.stderr


def test_help_shows_flags_as_flags_and_paragraphs_whole():
    """Flags take no value (``--overwrite``, not ``--overwrite <bool>``), and a paragraph of a
    command's description is never broken where its docstring's source line ended."""
    import typer.main
    from typer.testing import CliRunner

    from naf_cli.cli.app import app
    from naf_cli.cli.help_text import flowed

    group = typer.main.get_command(app)
    paragraphs = 0
    for args in [[]] + [[name] for name in group.commands]:  # type: ignore[attr-defined]
        command = group.commands[args[0]] if args else group  # type: ignore[attr-defined]
        shown = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "400"}).output
        assert "<bool>" not in shown, args
        for paragraph in (flowed(command.help) or "").split("\n\n"):
            text = " ".join(paragraph.split()).replace("\\[", "[")
            if len(text) < 300 and "`" not in text and "[" not in text:  # markup renders differently
                assert any(text in line for line in shown.splitlines()), (args, text)
                paragraphs += 1
    assert paragraphs >= 12
