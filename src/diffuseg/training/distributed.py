"""Data-parallel training on torch.distributed, started by ``torchrun``.

``torchrun --nproc-per-node N -m diffuseg train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; we join the process group from them (gloo on CPU, NCCL on CUDA), so
multi-node rendezvous works as torchrun documents it. Every rank holds the whole model; after
backward the gradients are summed across ranks in one flat all-reduce (what DDP's buckets do,
without wrapping the method, whose loss calls its networks itself). Only rank 0 writes. The
process group itself (``Dist``, ``init_distributed``, ``barrier``...) lives in
``diffuseg.core.distributed``, shared with sharded inference.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from diffuseg.core.distributed import Dist


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
