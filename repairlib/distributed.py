"""Data-parallel training under ``torchrun``: the process group, this process's rank and device.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op answer for a single
process: rank 0 of 1, the main process. Under ``torchrun --nproc_per_node=N`` the first call joins
the process group (NCCL on CUDA, gloo on the CPU), and each rank trains on its share of every global
batch (:func:`shard`), with gradients averaged by ``DistributedDataParallel``.
"""

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes torchrun started (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the one process that writes files (rank 0)."""
    return rank() == 0


def join(device: torch.device) -> torch.device:
    """Join torchrun's process group once and return this rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if world_size() == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's equal share ``[B / world, ...]`` of a global batch ``[B, ...]`` (all of it for one process)."""
    world = world_size()
    if world == 1:
        return batch
    if len(batch) % world:
        raise ValueError(f"a global batch of {len(batch)} cannot be split evenly over {world} processes: "
                         f"choose a batch size divisible by {world}")
    return batch.chunk(world)[rank()]


def mean_over_ranks(value: float) -> float:
    """The average of ``value`` over all ranks (``value`` itself for one process)."""
    if world_size() == 1 or not dist.is_initialized():
        return value
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return float(t) / world_size()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()
