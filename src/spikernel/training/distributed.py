"""Data-parallel training across the processes ``torchrun`` starts (gloo on CPUs, NCCL on GPUs).

``torchrun --nproc_per_node K -m spikernel train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain
``spikernel train`` sees none of them and runs as a world of one, with no process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from spikernel.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (a no-op in a world of one)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values into every rank's tensors, in place."""
        if self.distributed:
            for tensor in tensors:
                dist.broadcast(tensor, 0)

    def share(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def resolve_device(name: str | None = None, local_rank: int = 0) -> torch.device:
    """'auto' (or None) is this rank's GPU when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def device_label(device: torch.device | str) -> str:
    """'cpu', or e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)': results name the hardware they came from."""
    device = torch.device(device)
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def init(device_name: str | None = None) -> tuple[World, torch.device]:
    """This process's place in the world torchrun described, its device, and the process group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE, resolve_device(device_name)
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=size)
    return world, device


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP averages gradients over ranks during backward; rank 0's BatchNorm statistics are broadcast."""
    if not world.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
