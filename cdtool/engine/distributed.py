"""torch.distributed, set up from the environment `torchrun` provides (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): gloo on CPU, NCCL on CUDA. A plain `cdtool train` runs as one process and none
of this is touched."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def rank_device(device: torch.device) -> torch.device:
    """The device this process trains on: under torchrun a bare `cuda` means this rank's own GPU (LOCAL_RANK),
    which NCCL needs; without it every rank would land on GPU 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device: torch.device) -> Dist:
    """Join the process group when launched under torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_across(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world
