"""Data-parallel training on torch.distributed, started by ``torchrun``.

``torchrun --nproc-per-node N -m diffuseg train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; we join the process group from them (gloo on CPU, NCCL on CUDA), so
multi-node rendezvous works as torchrun documents it. Every rank holds the whole model; after
backward the gradients are summed across ranks in one flat all-reduce (what DDP's buckets do,
without wrapping the method, whose loss calls its networks itself). Only rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
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


def all_reduce_sum(tensor: torch.Tensor, ctx: Dist) -> torch.Tensor:
    if ctx.world > 1:
        dist.all_reduce(tensor)
    return tensor


def sum_gradients(parameters: list[torch.nn.Parameter], ctx: Dist) -> None:
    """Sum every parameter's gradient over ranks (a missing gradient counts as zero)."""
    if ctx.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(parameters, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n


def barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        dist.barrier()


def shutdown(ctx: Dist) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
