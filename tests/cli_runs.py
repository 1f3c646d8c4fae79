"""The real `naf` command in a subprocess, as users run it, for tests; and photo folders they share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

NAF = [sys.executable, "-m", "naf_cli"]


def naf(*args: str, env: dict | None = None, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``naf ARGS`` to the end; ``env`` adds to this process's environment."""
    return subprocess.run([*NAF, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)


def six_photos(folder: Path, examples: Path) -> Path:
    """Six distinct photos in ``folder``: the four examples and two mirrored copies."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(examples.glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    for name in ("chelsea.jpg", "rocket.jpg"):
        Image.open(examples / name).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"mirror-{name}")
    return folder
