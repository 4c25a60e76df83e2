"""Splitting the jobs over processes, GPUs and machines with torchrun (or one process without it).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Each rank takes a contiguous slice of the job groups (a group is
all strengths of one subject, prompt and seed, which share one layout template), so the slice depends on the job
list and the world size only: every rank computes it alone, and no two ranks make the same image. Ranks write
their own CSV and meet once, at a barrier before rank 0 merges; the process group is gloo on CPUs and GPUs alike,
since that barrier is all the ranks exchange (NCCL would buy nothing for it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    rank: int
    world_size: int
    local_rank: int

    def device(self, cpu: bool = False) -> torch.device:
        """cuda:LOCAL_RANK where there is CUDA (unless cpu), the CPU otherwise."""
        if cpu or not torch.cuda.is_available():
            return torch.device("cpu")
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {self.local_rank}, but this machine has {torch.cuda.device_count()} GPU(s): start "
                             "torchrun with --nproc_per_node at most the number of GPUs (or pass --cpu)")
        return torch.device("cuda", self.local_rank)


def shard_from_environment() -> Shard:
    """This process's place: from torchrun's variables, or rank 0 of 1."""
    try:
        shard = Shard(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, as torchrun sets them ({exc})") from exc
    if not 0 <= shard.rank < shard.world_size:
        raise ValueError(f"RANK {shard.rank} is outside WORLD_SIZE {shard.world_size}")
    return shard


def slice_of(groups: list, shard: Shard) -> list:
    """The contiguous slice of the groups that this rank does; the slices of all ranks cover each group once."""
    count = len(groups)
    return groups[shard.rank * count // shard.world_size:(shard.rank + 1) * count // shard.world_size]


class ProcessGroup:
    """The ranks' one meeting point. Without torchrun (world size 1) there is nothing to join or wait for."""

    def __init__(self, shard: Shard, barrier_timeout: timedelta):
        self.shard = shard
        self.joined = shard.world_size > 1 and not dist.is_initialized()
        if self.joined:
            # The timeout is how long a finished rank waits for the slowest at the barrier: ranks may finish hours apart.
            dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world_size, timeout=barrier_timeout)

    def barrier(self) -> None:
        if self.shard.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.joined:
            dist.destroy_process_group()
