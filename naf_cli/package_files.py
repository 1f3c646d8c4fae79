"""Files shipped inside the package (the repository's ``models/`` folder, installed as
``naf_cli.models``): checkpoints and their cards, the photo split, tuned peer settings."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_file(name: str) -> Path:
    """Path of a file shipped in the wheel's ``naf_cli.models``."""
    return Path(str(resources.files("naf_cli.models").joinpath(name)))
