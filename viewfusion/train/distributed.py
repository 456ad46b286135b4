"""One process per device: torchrun detection, process group set-up, rank-0-only helpers.

torchrun (or submitit, see viewfusion/train/launch.py) exports RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; without them the process trains alone.

    torchrun --standalone --nproc-per-node=4 -m viewfusion.cli train --config C --shards D --out R
    torchrun --standalone --nproc-per-node=2 -m viewfusion.cli train ... --device cpu   # gloo

GPU ranks use NCCL and `cuda:LOCAL_RANK`; CPU ranks use gloo. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from viewfusion.errors import ViewFusionError
from viewfusion.model.device import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) without it."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as err:
        raise ViewFusionError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None


def setup(*, device: str = "auto") -> Dist:
    """Pick the device and, with more than one rank, join the process group (NCCL or gloo)."""
    rank, world_size, local_rank = env_ranks()
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ViewFusionError(
            f"train.global_batch_size {global_batch} is not divisible by the {world_size} ranks; "
            f"use a multiple of {world_size} (e.g. --set train.global_batch_size="
            f"{max(world_size, global_batch // world_size * world_size)})")
    return global_batch // world_size


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list when alone)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum or max over ranks (a no-op when alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def print0(*args: Any, **kwargs: Any) -> None:
    if env_ranks()[0] == 0:
        print(*args, **kwargs, flush=True)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
