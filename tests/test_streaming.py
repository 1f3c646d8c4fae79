"""Decoding in worker processes and writing on a thread change nothing in the output."""

from __future__ import annotations

import subprocess

import pytest
import torch
from cli_runs import NAF
from feature_files import contents


def test_workers_give_the_same_file_as_inline_decoding(tmp_path, examples_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in examples_dir.glob("*.jpg"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a failure decoded in a worker
    outputs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.h5"
        result = subprocess.run([*NAF, "upsample", str(folder), "-o", str(out), "--upsampler", "bilinear", "--scale", "4",
                                 "--workers", workers, "--device", "cpu"], capture_output=True, text=True, timeout=600)
        assert result.returncode == 3, result.stderr
        assert "broken.png" in result.stderr and "model busy" in result.stderr
        outputs[workers] = contents(out)
    assert sorted(outputs["0"]) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    assert outputs["0"] == outputs["2"]


def test_the_writer_waits_for_a_banded_output_before_the_next_batch_runs():
    """A banded output is computed while it is written, on the writer thread: ``wait`` returns
    only once it is done (the run loop calls it before the next batch), and passes its error on."""
    import threading

    from naf_cli.pipeline.streaming import BackgroundWriter

    release = threading.Event()

    class SlowSink:
        def __init__(self):
            self.written = []

        def write(self, name, features, attrs):
            release.wait(5)
            if name == "bad.png":
                raise OSError("disk gone")
            self.written.append(name)

        def end_group(self):
            pass

    sink = SlowSink()
    writer = BackgroundWriter(sink)
    writer.write("a.png", torch.zeros(1), {})
    threading.Timer(0.2, release.set).start()
    writer.wait()
    assert sink.written == ["a.png"]
    writer.write("bad.png", torch.zeros(1), {})
    with pytest.raises(OSError, match="disk gone"):
        writer.wait()
    writer.close()
