"""Every command, run as users run it, on the failures users hit: a bad option, a missing
input, an output that cannot be written, a full disk, an interrupt. Each must end with one
``error: ...; fix: ...`` line on stderr (no traceback, no Typer box) and the README's exit code:
2 for what is found before any work, 1 for a run that failed, 130 for an interrupt."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runs import NAF, naf
from PIL import Image

QUICK = ["--long-side", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def place(tmp_path_factory, examples_dir) -> Path:
    """A folder with ``photos/`` (two small photos), ``lr.h5`` (their features), ``afile`` (a file
    where a folder is needed) and ``many/`` (40 photos, for runs long enough to interrupt)."""
    root = tmp_path_factory.mktemp("matrix")
    (root / "photos").mkdir()
    (root / "many").mkdir()
    for name in ("chelsea", "coffee"):
        Image.open(examples_dir / f"{name}.jpg").convert("RGB").resize((96, 64)).save(root / "photos" / f"{name}.png")
    for i in range(40):
        shutil.copy(examples_dir / "chelsea.jpg", root / "many" / f"{i:02d}.jpg")
    (root / "afile").write_text("not a folder")
    result = naf("extract", str(root / "photos"), "-o", str(root / "lr.h5"), *QUICK)
    assert result.returncode == 0, result.stderr
    return root


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failure prints; fails when there is a traceback, a box, or more than one."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert "; fix: " in errors[0], errors[0]
    return errors[0]


# -- a bad option: refused before any work, exit 2 -----------------------------------------

BAD_OPTIONS = {
    "extract": (["extract", "{photos}", "-o", "{out}/o.h5", "--long-side", "0"], "--long-side must be a finite number"),
    "upsample": (["upsample", "{photos}", "-o", "{out}/o.h5", "--scale", "0"], "--scale must be a finite number"),
    "denoise": (["denoise", "{photos}", "-o", "{out}/d", "--jpeg-quality", "0"], "--jpeg-quality 0 is out of range"),
    "info": (["info", "{lr}", "--bogus"], "No such option: --bogus"),
    "verify": (["verify", "{lr}", "--bogus"], "No such option: --bogus"),
    "merge": (["merge", "{lr}"], "Missing option '-o'"),
    "pack": (["pack", "{lr}"], "Missing option '-o'"),
    "eval": (["eval", "{photos}", "--factor", "3"], "--factor 3 is not part of the protocol"),
    "train": (["train", "{photos}", "-o", "{out}/t", "--steps", "0"], "--steps must be at least 1"),
    "bench": (["bench", "--ratio", "0"], "--ratio must be a finite number above 0"),
    "pca": (["pca", "{photos}", "-o", "{out}/p", "--components", "0"], "--components takes 1 to 3"),
    "env": (["env", "--bogus"], "No such option: --bogus"),
    "models": (["models", "--bogus"], "No such option: --bogus"),
}


def _fill(args: list[str], place: Path, out: Path) -> list[str]:
    return [a.format(photos=place / "photos", lr=place / "lr.h5", out=out, many=place / "many") for a in args]


def test_the_matrix_covers_every_command():
    from typer.main import get_command

    from naf_cli.cli.app import app

    assert set(get_command(app).commands) == set(BAD_OPTIONS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", sorted(BAD_OPTIONS))
def test_a_bad_option(place, tmp_path, command):
    args, words = BAD_OPTIONS[command]
    result = naf(*_fill(args, place, tmp_path), timeout=300)
    assert result.returncode == 2, result.stderr
    assert words in one_error_line(result)
    assert list(tmp_path.iterdir()) == []  # nothing written


# -- a missing input: exit 2, the path named ------------------------------------------------

MISSING = {
    "extract": ["extract", "{out}/nosuch", "-o", "{out}/o.h5"],
    "upsample": ["upsample", "{out}/nosuch", "-o", "{out}/o.h5"],
    "denoise": ["denoise", "{out}/nosuch.png"],
    "info": ["info", "{out}/nosuch.h5"],
    "verify": ["verify", "{out}/nosuch.h5"],
    "merge": ["merge", "{out}/nosuch.h5", "-o", "{out}/m.h5"],
    "pack": ["pack", "{out}/nosuch.h5", "-o", "{out}/one.h5"],
    "eval": ["eval", "{out}/nosuch"],
    "train": ["train", "{out}/nosuch", "-o", "{out}/t"],
    "pca": ["pca", "{out}/nosuch.png", "-o", "{out}/p"],
}


@pytest.mark.parametrize("command", sorted(MISSING))
def test_a_missing_input(place, tmp_path, command):
    result = naf(*_fill(MISSING[command], place, tmp_path), timeout=300)
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / "nosuch") in one_error_line(result)
    assert list(tmp_path.iterdir()) == []


# -- an output that cannot be written: refused before any work, exit 2 ----------------------

UNWRITABLE = {
    "extract": ["extract", "{photos}", "-o", "{out}/o.h5", *QUICK],
    "upsample": ["upsample", "{photos}", "-o", "{out}/o.h5", "--scale", "2", *QUICK],
    "denoise": ["denoise", "{photos}", "-o", "{out}/d", "--device", "cpu"],
    "merge": ["merge", "{lr}", "-o", "{out}/m.h5"],
    "pack": ["pack", "{lr}", "-o", "{out}/one.h5"],
    "train": ["train", "{photos}", "-o", "{out}/t", "--steps", "1", "--crop", "32", "--device", "cpu"],
    "pca": ["pca", "{photos}", "-o", "{out}/p", "--height", "32", *QUICK],
}


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody can write: a read-only tmpfs when run as root (who ignores permissions),
    a mode 555 folder otherwise."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("root without mount(8): no read-only folder to test with")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.parametrize("command", sorted(UNWRITABLE))
def test_an_output_in_a_file_where_a_folder_is_needed(place, command):
    result = naf(*_fill(UNWRITABLE[command], place, place / "afile"), timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"{place / 'afile'} is a file, not a folder; fix: choose another -o path" in one_error_line(result)
    assert (place / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("command", sorted(UNWRITABLE))
def test_an_output_in_a_read_only_folder(place, tmp_path, command):
    with read_only_folder(tmp_path / "ro") as folder:
        result = naf(*_fill(UNWRITABLE[command], place, folder), timeout=300)
        assert result.returncode == 2, result.stderr
        assert f"cannot write into {folder}: it is read-only" in one_error_line(result)
        assert list(folder.iterdir()) == []


# -- a full disk: exit 1 once work has started, finished outputs kept -----------------------


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past ``limit`` bytes fail (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("command", sorted(UNWRITABLE))
def test_a_write_that_does_not_fit(place, tmp_path, command):
    # 2 kB: the lock file's first slot fits, nothing else any command writes does
    args = _fill(UNWRITABLE[command], place, tmp_path)
    result = subprocess.run([*NAF, *args], capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(2000))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert "ulimit -f" in line and ("free disk space" in line or "raise the limit" in line), line
    left = sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith("."))
    assert left == [], left  # no temporary file left behind


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 kB file system (tmpfs): a real ENOSPC. Root only."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and mount(8) for a small file system")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("command", ["denoise", "train", "upsample"])
def test_a_full_disk(place, small_disk, command):
    args = {
        "denoise": ["denoise", str(place / "many"), "-o", str(small_disk / "d"), "--device", "cpu", "--batch-size", "1"],
        "train": ["train", str(place / "photos"), "-o", str(small_disk / "t"), "--steps", "1", "--crop", "32", "--device", "cpu"],
        # 20 of the 40 photos: their features (about 210 kB) fit the 256 kB disk, so the run starts
        # (a run that cannot fit is refused before any work); its shard files' own overhead fills it
        "upsample": ["upsample", str(place / "many"), "--glob", "[01]?.jpg", "-o", str(small_disk / "o.h5"), "--scale", "2",
                     "--shard-images", "1", *QUICK],
    }[command]
    result = naf(*args, timeout=600)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert "free disk space" in line, line
    if command == "denoise":  # what was finished is whole and kept
        kept = sorted((small_disk / "d").iterdir())
        assert kept and all(Image.open(path).size == (451, 300) for path in kept)
    if command == "upsample":
        info = naf("info", str(small_disk / "o.h5"))
        assert info.returncode == 1 and "incomplete" in info.stdout + info.stderr, info.stdout + info.stderr


# -- an interrupt: exit 130, one line, finished work kept ------------------------------------

INTERRUPTED = {
    "extract": ["extract", "{many}", "-o", "{out}/o.h5", "--long-side", "1024", "--device", "cpu"],
    "upsample": ["upsample", "{many}", "-o", "{out}/o.h5", "--device", "cpu"],
    "denoise": ["denoise", "{many}", "-o", "{out}/d", "--device", "cpu"],
    "eval": ["eval", "{many}", "--factor", "2", "--device", "cpu"],
    "train": ["train", "{many}", "-o", "{out}/t", "--steps", "100000", "--crop", "64", "--device", "cpu"],
    "bench": ["bench", "--ratio", "8", "--repeats", "1000", "--device", "cpu"],
    "pca": ["pca", "{many}", "-o", "{out}/p", "--device", "cpu"],
}


@pytest.mark.parametrize("command", sorted(INTERRUPTED))
def test_an_interrupt(place, tmp_path, command):
    process = subprocess.Popen([*NAF, *_fill(INTERRUPTED[command], place, tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    first = process.stderr.readline()  # the command has started
    if command == "train":
        time.sleep(2)
    else:  # interrupted while it works: right after its first image (bench: its first forward) is done
        started = "  forward " if command == "bench" else "[1/"
        while not first.startswith(started) and first:
            first = process.stderr.readline()
    assert process.poll() is None, f"{command} ended before it could be interrupted: {first}"
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, first + rest
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    expected = ("error: interrupted after 0 of 3 rows; fix: rerun for the rest, e.g. with fewer --ratio or --upsampler values"
                if command == "bench" else "error: interrupted; fix: rerun the same command to go on (finished work is kept)")
    assert errors == [expected], rest
    assert "Traceback" not in rest and "Exception ignored" not in rest


def test_sigterm_to_the_whole_process_group_with_busy_decoding_workers(place, tmp_path):
    """A scheduler stops a job with SIGTERM to its process group: the decoding workers die of it
    too, which must neither print DataLoader's "worker killed by signal" nor leave a process."""
    process = subprocess.Popen([*NAF, "upsample", str(place / "many"), "-o", str(tmp_path / "o.h5"), "--workers", "2",
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stderr is not None
    process.stderr.readline()
    time.sleep(3)
    os.killpg(process.pid, signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, rest
    assert "Traceback" not in rest and "Exception ignored" not in rest and "killed by signal" not in rest, rest
    assert [line for line in rest.splitlines() if line.startswith("error:")] == [
        "error: interrupted; fix: rerun the same command to go on (finished work is kept)"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every worker of the group is gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a decoding worker outlived the run")


def test_hdf5_messages_on_a_full_disk_become_one_line(small_disk):
    """HDF5's own message for a failed create runs over several lines; ours is one, with the fix."""
    import h5py

    from naf_cli.disk import write_failure

    with open(small_disk / "filler", "wb") as filler, contextlib.suppress(OSError):
        filler.write(b"\0" * (1 << 20))  # more than the disk holds
    with pytest.raises(OSError) as raised:
        h5py.File(small_disk / "shard.h5", "w").close()
    assert "\n" in str(raised.value)  # what users saw
    line = str(write_failure(small_disk / "shard.h5", raised.value))
    assert "\n" not in line and line.startswith(f"cannot write {small_disk / 'shard.h5'}: No space left on device; fix: ")
