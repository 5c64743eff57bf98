"""torch.distributed glue: one process per GPU under `torchrun`, a no-op otherwise.

`chexvision train` runs unchanged as `torchrun --nproc_per_node=N -m chexvision_lib.cli train ...`:
torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, `setup` joins the process group (NCCL on GPUs, gloo on
CPU), `wrap` puts the model in DistributedDataParallel, and rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistState:
    active: bool
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> DistState:
    """Join the process group if launched by torchrun; otherwise a single-process state."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 1:
        return DistState(False, 0, 1, torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not torch_dist.is_initialized():
        # device_id binds NCCL to this rank's GPU up front (and silences barrier()'s warning).
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
        )
    return DistState(True, torch_dist.get_rank(), torch_dist.get_world_size(), device)


def wrap(model: torch.nn.Module, state: DistState, find_unused: bool = False) -> torch.nn.Module:
    if not state.active:
        return model
    device_ids = [state.device.index] if state.device.type == "cuda" else None
    # find_unused is needed while a frozen backbone produces no gradients (two-phase schedule).
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def no_sync(model: torch.nn.Module):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP only)."""
    return (
        model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
    )


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0 (ranks may hold different lengths)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return tensor
    world = torch_dist.get_world_size()
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    torch_dist.all_gather(lengths, length)
    longest = int(max(x.item() for x in lengths))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch_dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, lengths, strict=True)])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place); a no-op in a single process."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


def cleanup(state: DistState) -> None:
    if state.active and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
