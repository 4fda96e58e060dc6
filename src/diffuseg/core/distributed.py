"""Several processes started by ``torchrun``: the process group and the collectives that training
(``diffuseg.training.distributed``) and sharded inference (``diffuseg.inference.batch``) share.

``torchrun --nproc-per-node N -m diffuseg ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; we join the process group from them (gloo on CPU, NCCL on CUDA), so
multi-node rendezvous works as torchrun documents it. A plain run is rank 0 of 1 and never
touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from diffuseg.errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 of torchrun's processes, or a plain run: the one that prints a command's result."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_name: str) -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda and local >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started a process for GPU {local} but this machine has "
                          f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node "
                          f"{torch.cuda.device_count()} or --device cpu")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local)


def device_name_for(ctx: Dist, device_name: str) -> str:
    """Each rank of a CUDA run takes the GPU of its local rank."""
    if ctx.world > 1 and device_name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return device_name


def barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        dist.barrier()


def gather_objects(value: Any, ctx: Dist) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` for a plain
    run. A collective: every rank must call it."""
    if ctx.world == 1:
        return [value]
    values: list[Any] = [None] * ctx.world
    dist.all_gather_object(values, value)
    return values


def shutdown(ctx: Dist) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[Dist]:
    """``init_distributed`` on entry, ``shutdown`` on exit (also after an error)."""
    ctx = init_distributed(device_name)
    try:
        yield ctx
    finally:
        shutdown(ctx)
