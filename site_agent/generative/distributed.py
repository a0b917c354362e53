"""Multi-process training under ``torchrun`` (DDP): NCCL on GPUs, gloo on CPUs.

Every rank draws the same full batch (same seeds), computes the loss on its own contiguous
shard, and scales it by ``shard_size * world / batch_size``; DDP's gradient averaging then
yields exactly the full-batch gradient, so a run on W processes follows the single-process run
(up to floating-point summation order). Rank 0 alone writes checkpoints, weights and reports;
the others wait at barriers.

Run: ``torchrun --nproc-per-node 2 $(which site-agent) train --workspace WS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


_STATE = Dist()


def setup() -> Dist:
    """Join the process group that torchrun describes in the environment (once)."""
    global _STATE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _STATE = Dist()
        return _STATE
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    _STATE = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(_STATE.local_rank)
    return _STATE


def current() -> Dist:
    return _STATE


def device_for(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def barrier() -> None:
    if _STATE.active:
        import torch.distributed as dist

        dist.barrier()


def shard(batch_size: int) -> tuple[slice, float]:
    """This rank's contiguous slice of a batch and the factor that makes DDP's averaged
    gradient equal the full-batch gradient (``len(slice) * world / batch_size``)."""
    d = _STATE
    if not d.active:
        return slice(0, batch_size), 1.0
    if batch_size < d.world:
        from shared.errors import InputError

        raise InputError(
            f"batch size {batch_size} is smaller than the {d.world} processes",
            hint="use fewer processes or a profile with a larger batch",
        )
    base, extra = divmod(batch_size, d.world)
    start = d.rank * base + min(d.rank, extra)
    size = base + (1 if d.rank < extra else 0)
    return slice(start, start + size), size * d.world / batch_size


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks stop together)."""
    if not _STATE.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when running under torchrun."""
    if not _STATE.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [_STATE.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(module, device_ids=ids)


def teardown() -> None:
    if _STATE.active:
        import torch.distributed as dist

        dist.destroy_process_group()
