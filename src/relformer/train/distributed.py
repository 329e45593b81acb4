"""Thin helpers over ``torch.distributed``: one process, or one per rank under ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus the rendezvous address);
:func:`init_distributed` reads them, picks the device (``cuda:<local rank>`` when CUDA is used,
else the CPU) and the backend (nccl on CUDA, gloo on CPU). Without them it is a single process
and every helper is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Dist", "init_distributed", "shutdown", "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(kind: str, local_rank: int) -> torch.device:
    """``kind`` in ``{"auto", "cpu", "cuda"}``: auto = cuda if available else cpu."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available (torch.cuda.is_available() "
                             "is False); use --set device=cpu or device=auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sum each tensor over the ranks (in one collective); identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return tensors
    names = sorted(tensors)
    flat = torch.stack([tensors[n].detach().to(torch.float64).reshape(()) for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return dict(zip(names, flat.unbind()))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
