"""Reading feature files: ``FeatureFile`` (a mapping of image names to arrays).

Plain h5py reads the files too (docs/format.md); this adds the format-version check, link
following, and a handle opened per process so that it works in DataLoader workers, with
both the fork and the spawn start methods.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from naf_cli.errors import NafError, first_line
from naf_cli.feature_format import FEATURES_GROUP, FORMAT_VERSION, list_entries, plain_attr
from naf_cli.pca.stored import PCA_GROUP, StoredBasis

FIX = "fix: pass an .h5 file written by naf extract or naf upsample (docs/format.md)"
UNREADABLE_FIX = ("fix: keep the file and its .shards folder together, or rerun the command that wrote it (it redoes "
                  "missing images); naf info lists every problem")



class FeatureFile(Mapping[str, np.ndarray]):
    """``FeatureFile(path)[name]`` -> [C, H, W] array; ``.dataset(name)`` for tiles and channel ranges.

    A file written with ``--pca K`` holds K components per image: ``[name]`` gives them,
    ``reconstruct(name)`` the features in the backbone's C channels (``.pca`` is the basis).

    A file written by another tool is read too if it has ``/features/<name>`` datasets of
    shape [C, H, W]; a ``format_version`` newer than this naf-cli's is refused.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise NafError(f"{self.path} {'is a folder' if self.path.is_dir() else 'does not exist'}; {FIX}")
        if not h5py.is_hdf5(self.path):
            raise NafError(f"{self.path} is not an HDF5 file; {FIX}")
        self._file: h5py.File | None = None
        self._pid = -1
        handle = self._handle()
        version = int(handle.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise NafError(f"{self.path} has format version {version}, newer than this naf-cli reads ({FORMAT_VERSION}); "
                           f"fix: pip install -U naf-cli")
        group = handle.get(FEATURES_GROUP)
        if not isinstance(group, h5py.Group):
            raise NafError(f"{self.path} has no /{FEATURES_GROUP} group; {FIX}")
        entries = list_entries(group)
        self.names = [name for name, _ in entries]
        # images whose link cannot be followed: listed, and reading one is an error that names it
        self.unreadable = {name: problem for name, problem in entries if problem}
        self._name_set = frozenset(self.names)
        self.attrs = {key: plain_attr(value) for key, value in handle.attrs.items()}
        pca = handle.get(PCA_GROUP)
        # --pca files: the features are coordinates along these components
        self.pca: StoredBasis | None = StoredBasis.read(pca) if isinstance(pca, h5py.Group) else None

    def _handle(self) -> h5py.File:
        # HDF5 handles must not cross a fork: each process opens its own
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def dataset(self, name: str) -> h5py.Dataset:
        """The h5py dataset of ``name``: slice it to read a tile or a channel range only.

        An image whose link cannot be followed (a missing or damaged shard) is a NafError
        naming it; a name the file does not list is a KeyError."""
        if name in self.unreadable:
            raise NafError(f"image {name} of {self.path} cannot be read: {self.unreadable[name]}; {UNREADABLE_FIX}")
        if name not in self._name_set:
            raise KeyError(name)
        try:
            node = self._handle()[FEATURES_GROUP][name]
        except (KeyError, OSError) as err:
            raise NafError(f"image {name} of {self.path} cannot be read ({first_line(err)}); {UNREADABLE_FIX}") from err
        if not isinstance(node, h5py.Dataset):
            raise KeyError(name)
        return node

    def __getitem__(self, name: str) -> np.ndarray:
        dataset = self.dataset(name)
        try:
            return dataset[()]
        except OSError as err:  # a chunk whose checksum fails, or a shard truncated on disk
            raise NafError(f"image {name} of {self.path} is damaged ({first_line(err)}); fix: run naf verify "
                           f"{self.path}, then rerun the command that wrote it to redo the damaged images") from err

    def reconstruct(self, name: str) -> np.ndarray:
        """[C, H, W] float32 features of a ``--pca`` file in the original channels (less what the
        components left out held); for any other file, its stored features as float32."""
        stored = self[name]
        return stored.astype(np.float32) if self.pca is None else self.pca.reconstruct(stored)

    def image_attrs(self, name: str) -> dict[str, Any]:
        return {key: plain_attr(value) for key, value in self.dataset(name).attrs.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._name_set

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, -1  # reopened in the receiving process
        return state
