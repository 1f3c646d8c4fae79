"""Runs under ``torchrun``: each rank is one part of the run (RANK of WORLD_SIZE).

The process group is used once, before any work: every rank checks that it sees the same
settings and the same inputs as the others and the same output folder, and rank 0 does
what must happen once (``--overwrite``'s deletion) before anyone starts. Then the group is
destroyed: ranks may finish hours apart, and gloo and NCCL collectives time out after
minutes, so nothing waits for anything after the work. The last rank to finish makes the
output complete (``HDF5FeatureSink``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from naf_cli.errors import NafError, OptionError
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.resume import first_difference

# how long ranks wait for each other at the start (model loading may download weights)
START_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class TorchrunRank:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def partition(self) -> Partition:
        return Partition(self.rank, self.world_size)


def torchrun_rank(environ: Mapping[str, str] = os.environ) -> TorchrunRank | None:
    """The rank torchrun set in the environment, or None outside torchrun (or with one process)."""
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise OptionError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun); fix: start the job "
                          "with torchrun, or unset them") from None
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise OptionError(f"RANK={rank} is outside WORLD_SIZE={world_size}; fix: start the job with torchrun")
    return TorchrunRank(rank, world_size, local_rank)


def rank_device(device: str, rank: TorchrunRank) -> str:
    """One device per local rank: ``auto`` and ``cuda`` become ``cuda:<LOCAL_RANK>`` where CUDA is
    present; an explicit ``cuda:N``, ``cpu`` or ``mps`` is kept."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        if rank.local_rank >= torch.cuda.device_count():
            raise OptionError(f"LOCAL_RANK {rank.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                              f"fix: --nproc-per-node {torch.cuda.device_count()} or fewer")
        return f"cuda:{rank.local_rank}"
    return device


def start_together(rank: TorchrunRank, device: str, agreed: Mapping[str, object], output_folder: Path,
                   claim: Callable[[], None], first: Callable[[], None]) -> None:
    """The only collective of a run, before any work (see the module docstring).

    ``claim`` runs on every rank first (taking its part's lock on the output); a refusal on
    any rank is an error on every rank, so none waits for the others in vain. ``agreed``:
    values every rank must share (settings, inputs); a difference is an OptionError on every
    rank, naming it. ``first`` runs on rank 0 before the others go on. ``output_folder``
    must be one folder for every rank (a file system shared by the nodes).
    """
    import torch.distributed as dist

    from naf_cli.pipeline.memory import make_current

    make_current(device)
    # gloo whatever the device: the collectives only swap small Python objects, once, and NCCL
    # would refuse two ranks on one GPU (an explicit --device cuda:N) and start a GPU context early
    dist.init_process_group("gloo", timeout=START_TIMEOUT)
    try:
        refusal = ""
        try:
            claim()
        except NafError as err:
            refusal = str(err)
        refusals: list[object] = [None] * rank.world_size
        dist.all_gather_object(refusals, refusal)
        refused = next((str(r) for r in refusals if r), "")
        if refused:
            raise OptionError(refused)
        views: list[object] = [None] * rank.world_size
        dist.all_gather_object(views, dict(agreed))
        for other, view in enumerate(views[1:], start=1):
            difference = first_difference(views[0], view)
            if difference:
                raise OptionError(f"rank {other} of the torchrun job does not run rank 0's job: {difference}, rank 0 vs "
                                  f"rank {other}; fix: give every rank the same command, files and naf-cli version"
                                  f"{difference.advice()}")
        message: list[object] = [None, None, str(output_folder)]
        if rank.rank == 0:
            try:
                first()
                token = output_folder / f".naf-rendezvous-{uuid.uuid4().hex}"
                token.touch()
                message[1] = token.name
            except NafError as err:
                message[0] = str(err)
        dist.broadcast_object_list(message, src=0)
        error, token_name, rank0_folder = message
        if error is not None:
            raise OptionError(f"rank 0 could not start the run: {error}")
        seen: list[bool | None] = [None] * rank.world_size
        dist.all_gather_object(seen, (output_folder / str(token_name)).exists())
        if rank.rank == 0:
            (output_folder / str(token_name)).unlink(missing_ok=True)
        blind = [str(r) for r, ok in enumerate(seen) if not ok]
        if blind:
            raise OptionError(f"rank(s) {', '.join(blind)} do not see the folder rank 0 writes to ({rank0_folder}); fix: "
                              f"put -o on a file system shared by every node, or give each node its own -o and --shard "
                              f"parts joined with naf merge")
    finally:
        dist.destroy_process_group()
