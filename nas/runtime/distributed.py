"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N train_searched.py ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and
joins the process group (NCCL on CUDA, gloo on CPU). Without them everything
here degrades to a single process, so the same scripts run unchanged.

The data split between ranks is by *slicing every global batch*: all ranks
draw the same permutation (same generator seed), batch it at
``batch_size * world_size`` and rank ``r`` takes ``batch[r::world_size]``.
Shards are disjoint, every rank does the same number of steps, and the
per-rank batch is ``--batch_size`` (as with ``DistributedSampler``).

Gradients are averaged here and nowhere else: a classifier's step goes through
:func:`data_parallel` (DDP, whose hooks overlap the all-reduce with the backward pass); the
bilevel search's step calls :func:`all_reduce_mean_grads` for the weights and the architecture,
because its second-order architecture gradient differentiates through a virtual step that DDP's
hooks do not see.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

import torch
import torch.distributed as dist

from nas.runtime.errors import FerNasError

__all__ = ["DistInfo", "init_distributed", "cleanup", "all_reduce_sum", "all_reduce_max", "all_gather_objects",
           "average_batchnorm_stats", "all_reduce_mean_grads", "data_parallel",
           "broadcast_object", "barrier", "shard_batch", "single_process"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``is_main`` writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the rank that writes files and logs."""
        return self.rank == 0


def single_process(device: torch.device | str = "cpu") -> DistInfo:
    """The DistInfo of a run without torch.distributed, on ``device``."""
    return DistInfo(device=torch.device(device))


def init_distributed(device: torch.device | str = "cpu", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    ``device`` is the resolved single-process device; under DDP on CUDA each
    rank takes ``cuda:LOCAL_RANK``. Returns a :class:`DistInfo` either way."""
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FerNasError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s) on this node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup(barrier: bool = True) -> None:
    """Leave the process group. On a clean exit every rank first meets at a barrier: a rank
    that tears gloo down while its peer is still in a collective or in its own teardown can
    abort the peer ("terminate called without an active exception", SIGABRT). After an
    error the barrier is skipped, since the other ranks may never reach it."""
    if dist.is_available() and dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def is_initialized() -> bool:
    """Whether this process has joined a process group (torchrun, or a test's own group)."""
    return dist.is_available() and dist.is_initialized()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op single-process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """``t`` replaced in place by its elementwise maximum over ranks (unchanged in one process)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable, in-process only) as a list indexed by rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in one process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if _active():
        dist.barrier()


def shard_batch(idx: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's disjoint share of a global batch of indices."""
    if info.world_size <= 1:
        return idx
    return idx[info.rank::info.world_size]


def average_batchnorm_stats(model: torch.nn.Module, info: DistInfo) -> None:
    """Average the running statistics of every batch-norm layer over ranks (each rank's
    forward passes updated them from its own shard), so that every rank evaluates and
    saves the same model. A no-op in one process."""
    if not info.enabled:
        return
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for b in m.buffers(recurse=False):
                    if b.is_floating_point():
                        all_reduce_sum(b)
                        b.div_(info.world_size)


def data_parallel(model: torch.nn.Module, info: DistInfo, *, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel when more than one process takes part (on
    CUDA, on this rank's device), else ``model`` itself. The wrapper is what a step calls; the
    module itself stays what is saved and evaluated."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    cuda = info.device.type == "cuda"
    return DDP(model, device_ids=[info.device] if cuda else None, find_unused_parameters=find_unused_parameters)


def all_reduce_mean_grads(params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over ranks in one flat all-reduce (a supernet has
    hundreds of small tensors, for which one message each would be latency-bound). A
    parameter without a gradient counts as zero on that rank. A no-op in one process."""
    if not _active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


