"""How features are stored: dtype and compression of the datasets, images per shard."""

from __future__ import annotations

import numpy as np

from naf_cli.errors import OutputError

DTYPES = {"float16": np.float16, "float32": np.float32}
COMPRESSIONS = ("none", "gzip", "lzf")


def check_storage(dtype: str, compression: str, shard_images: int | None) -> None:
    """An OutputError for a dtype, compression or shard size the store does not take."""
    if dtype not in DTYPES:
        raise OutputError(f"unknown --out-dtype {dtype}; fix: use float16 or float32")
    if compression not in COMPRESSIONS:
        raise OutputError(f"unknown --compression {compression}; fix: use none, gzip or lzf")
    if shard_images is not None and shard_images < 1:
        raise OutputError(f"--shard-images must be at least 1, got {shard_images}; fix: e.g. --shard-images 100, or "
                          f"leave it out (a shard every 30 s)")
