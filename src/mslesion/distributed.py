"""Data-parallel training across processes (`torchrun --nproc-per-node N -m mslesion train ...`).

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; with WORLD_SIZE > 1 the trainer joins a process group (nccl on
CUDA, gloo on CPU) and wraps the net in DistributedDataParallel. Results semantics are those of one process:

* every rank builds the same seeded epoch plan and, for each global batch of `batch_size` (patch, symmetry)
  pairs, takes the slice rank::world_size, so each augmented sample is seen exactly once per epoch;
* the loss is summed per rank and scaled so that DDP's gradient average equals the global batch mean;
* the optimiser takes one step per global batch, as in one process. Batch-norm statistics are per rank
  (as with plain DDP); running statistics are replaced by the population pass at the end anyway;
* only rank 0 writes files (run folder, checkpoints, model) and prints progress.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mslesion.errors import InputError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (world_size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> DistContext:
    """The job layout torchrun (or any launcher using its variables) put in the environment."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("WORLD_SIZE / RANK / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"invalid distributed layout: RANK {rank}, WORLD_SIZE {world}")
    return DistContext(rank, world, local)


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed job: the one process that writes outputs."""
    return env_context().is_main


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group if launched distributed; returns the context and this rank's device."""
    ctx = env_context()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        # Free the DDP wrapper (its reducer holds gloo work objects) while the interpreter is fully alive:
        # gloo threads releasing them during interpreter shutdown can abort the process (SIGABRT).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model (identity when not distributed)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's part of one global batch: elements rank, rank + world_size, ..."""
    return batch[ctx.rank::ctx.world_size] if ctx.enabled else batch


def loss_scale(local: int, global_: int, ctx: DistContext) -> float:
    """Factor for a per-rank summed loss so that DDP's mean over ranks is the global batch mean."""
    return ctx.world_size / global_ if ctx.enabled else 1.0 / local


def all_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of a small statistics tensor over ranks (for epoch loss / accuracy)."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
