"""Data-parallel training with torch.distributed, launched by ``torchrun``.

    torchrun --nproc_per_node 2 main.py --dataset ML-1M ...            # one machine
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node G main.py ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 main.py joins the
process group (NCCL on GPUs, gloo on CPUs). Each rank holds the whole graph and model and
computes its share of every batch's loss terms (``Shard``); the gradients are
summed over the ranks before every (replicated) Adam step, so the run follows the same
updates as one process with the same global batch, up to float summation order. Rank 0
evaluates, logs and writes the run folder; the others follow its early-stopping decision.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's share of every batch under torch.distributed (``torchrun``).

    Every rank draws the same permutation and negatives (same seed, same RNG calls) and
    propagates the whole graph; rank r then computes only its part of each loss term —
    positives lo..hi-1 of the batch for L_ssm (divided by the batch's |P|, not the part's),
    users and items in its id range for the AE and alignment terms — so the parts sum to the
    single-process loss, and summing the gradients over ranks (``sync_gradients``) gives the
    single-process gradient of the same global batch.
    """

    rank: int
    world: int

    def bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous share of n things."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> Shard:
    """Join the group torchrun describes; NCCL for CUDA devices, gloo otherwise."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    return Shard(dist.get_rank(), dist.get_world_size())


def all_ok(ok: bool, device: torch.device) -> bool:
    """True on every rank iff ``ok`` holds on every rank (so a failure on one rank stops
    them all instead of leaving the others blocked in a collective)."""
    flag = torch.tensor([0 if ok else 1], device=device)
    dist.all_reduce(flag)
    return int(flag) == 0


def broadcast_flag(value: bool, device: torch.device) -> bool:
    """Rank 0's ``value`` on every rank."""
    flag = torch.tensor([1 if value else 0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag)


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
