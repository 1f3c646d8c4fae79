"""A test hook: the crash tests kill a writer at exact points of its work.

``NAF_TEST_KILL_AT=published:2`` SIGKILLs the process at the 2nd such event (``published``:
a shard renamed and the index rewritten; ``writing``: inside a dataset write);
``published:1@1`` only in the process whose ``RANK`` (torchrun) is 1. Unset, it does nothing.
"""

from __future__ import annotations

import os
import signal

_COUNTS: dict[str, int] = {}


def kill_point(event: str) -> None:
    wanted = os.environ.get("NAF_TEST_KILL_AT")
    if not wanted:
        return
    wanted, _, rank = wanted.partition("@")
    if rank and os.environ.get("RANK") != rank:
        return
    _COUNTS[event] = _COUNTS.get(event, 0) + 1
    if wanted == f"{event}:{_COUNTS[event]}":
        os.kill(os.getpid(), signal.SIGKILL)
