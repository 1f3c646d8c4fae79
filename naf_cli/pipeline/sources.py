"""Where the inputs come from: folders, single files and lists of paths, named once.

Every input gets a *name*, its key in every output: the path relative to a root, with
``/`` separators. The root is the folder when one folder is the only input, else the
deepest folder containing every input (so ``naf upsample a/x.jpg`` names it ``x.jpg``).
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from naf_cli.errors import ImageReadError, OptionError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})


@dataclass(frozen=True)
class InputItem:
    """One input: ``name`` (its key in outputs, a relative POSIX path) and ``path`` on disk."""

    name: str
    path: Path


def _is_hidden(name: str) -> bool:
    # dot files and folders, macOS "._photo.jpg" resource forks included
    return name.startswith(".")


def _wanted(relative: str, globs: Sequence[str]) -> bool:
    """By suffix, or by ``--glob`` patterns (a pattern with ``/`` matches the relative path)."""
    if not globs:
        return PurePosixPath(relative).suffix.lower() in IMAGE_SUFFIXES
    base = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative if "/" in pattern else base, pattern) for pattern in globs)


def walk_folder(folder: Path, globs: Sequence[str] = ()) -> Iterator[Path]:
    """Files under ``folder`` that look like images, recursively, hidden entries skipped.

    Symbolic links to folders are followed once: a folder already visited (a link loop, or
    two links to one folder) is not entered again. Broken links and folders with image
    names are yielded too, so the pipeline reports them instead of silently dropping them.
    """
    visited: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        relative_top = Path(top).relative_to(folder)
        for entry in sorted(files) + dirs:
            if _is_hidden(entry):
                continue
            if _wanted((relative_top / entry).as_posix(), globs):
                yield Path(top) / entry


def read_path_list(list_file: Path | str) -> list[Path]:
    """Paths in a text file, one a line (``-``: standard input); blank lines and ``#`` lines skipped.

    Relative entries are relative to the list file's folder (to the current folder for ``-``).
    """
    if str(list_file) == "-":
        text, base = sys.stdin.read(), Path.cwd()
    else:
        list_file = Path(list_file)
        try:
            text = list_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise OptionError(f"cannot read --files-from {list_file}: {err}; fix: pass a UTF-8 text file with one path a line") from err
        base = list_file.parent
    lines = (line.strip() for line in text.splitlines())
    return [base / line for line in lines if line and not line.startswith("#")]


def _common_root(paths: Sequence[Path]) -> Path:
    parents = [os.path.abspath(p if p.is_dir() else p.parent) for p in paths]
    return Path(os.path.commonpath(parents))


class ImageSource:
    """The inputs of a run: folders (recursive), image files and ``--files-from`` lists.

    ``items`` is sorted by name and computed once, before any work; two inputs with one
    name are an OptionError.
    """

    def __init__(self, inputs: Sequence[Path | str] = (), globs: Sequence[str] = (), files_from: Path | str | None = None) -> None:
        paths = [Path(p) for p in inputs]
        for path in paths:
            if not path.exists() and not path.is_symlink():
                raise ImageReadError(f"input {path} does not exist; fix: pass a folder, an image file or --files-from LIST")
        listed = read_path_list(files_from) if files_from is not None else []
        if not paths and not listed:
            raise OptionError("no inputs given; fix: pass a folder or image files, or --files-from LIST")
        everything = paths + listed
        root = paths[0] if len(everything) == 1 and paths[0].is_dir() else _common_root(everything)
        root = Path(os.path.abspath(root))
        found: list[Path] = []
        for path in paths:
            found.extend(walk_folder(path, globs) if path.is_dir() else [path])
        found.extend(listed)
        by_name: dict[str, Path] = {}
        for path in found:
            name = Path(os.path.abspath(path)).relative_to(root).as_posix()
            if name in by_name and os.path.abspath(by_name[name]) != os.path.abspath(path):
                raise OptionError(f"two inputs have the name {name}: {by_name[name]} and {path}; fix: pass each file once")
            by_name[name] = path
        self.root = root
        self.items = [InputItem(name, by_name[name]) for name in sorted(by_name)]

    @classmethod
    def of(cls, items: Sequence[InputItem], root: Path) -> ImageSource:
        """A source of given items (e.g. the images behind a feature file), sorted by name."""
        source = cls.__new__(cls)
        source.root = Path(root)
        source.items = sorted(items, key=lambda item: item.name)
        return source

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[InputItem]:
        return iter(self.items)


def list_images(folder: Path, globs: Sequence[str] = ()) -> list[Path]:
    """Image files under ``folder`` (or ``[folder]`` for a file), sorted by relative path."""
    return [item.path for item in ImageSource([folder], globs)]
