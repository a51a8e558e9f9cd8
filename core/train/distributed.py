"""Data-parallel training across processes (``torchrun``), invisible to a single process.

Under ``torchrun --nproc_per_node N train.py ...`` every process runs the whole command on its
own copy of the data. :func:`setup` joins them in one process group (NCCL on CUDA, gloo on
CPU); the training loop then gives each process a disjoint share of every epoch's training rows
(``DistributedSampler``: the same shuffle on every rank, padded to equal shares) and routes
the net's training forward through ``DistributedDataParallel``, which averages the gradients.
All ranks therefore hold identical weights after every step, score the same validation rows and
stop at the same epoch; predictions need no communication, and only rank 0 writes files.

The global batch stays the configured ``batch_size`` (each rank takes ``ceil(batch_size / N)``
rows per step), so the optimisation matches one process up to batch-norm statistics, which are
computed per rank.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from core.errors import MMXError


def launched() -> bool:
    """True inside a multi-process ``torchrun`` launch (its ``WORLD_SIZE`` is above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True once :func:`setup` has joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes results, checkpoints and logs (rank 0, or a single process)."""
    return rank() == 0


def setup(device: str = "auto") -> str:
    """Join the ``torchrun`` process group if launched by one, and return the device this rank
    trains on (``cuda:<LOCAL_RANK>`` on GPUs, else ``device`` unchanged). A no-op otherwise."""
    if not launched() or active():
        return device
    if not dist.is_available():
        raise MMXError("torchrun launched several processes, but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda") or str(device).startswith("cuda")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise MMXError(f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                           "use --nproc_per_node at most the GPU count, or --device cpu")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def epoch_rows(rows: np.ndarray, epoch: int, seed: int) -> torch.Tensor:
    """This rank's share of ``rows`` for ``epoch``, in training order (``DistributedSampler``)."""
    sampler = DistributedSampler(range(len(rows)), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.as_tensor(np.asarray(rows))[torch.as_tensor(list(sampler), dtype=torch.long)]


def rank_batch_size(batch_size: int | None) -> int | None:
    """Rows per step on each rank so that the global batch stays ``batch_size`` (None: full batch)."""
    return None if batch_size is None else max(1, math.ceil(batch_size / world_size()))


@contextlib.contextmanager
def data_parallel(net: nn.Module) -> Iterator[None]:
    """Route ``net``'s training-mode calls through ``DistributedDataParallel`` for the duration.

    The methods' forward callables call ``net(...)`` themselves, so the wrapper is put behind
    the net's own ``forward``: the first call enters DDP (which prepares the gradient all-reduce
    and broadcasts buffers), DDP calls the net again, and that inner call runs the original
    forward. Evaluation-mode calls run locally: every rank holds the same weights.
    """
    if not active():
        yield
        return
    ddp = DistributedDataParallel(net, find_unused_parameters=True)
    original = net.forward
    inside = False

    def forward(*args, **kwargs):
        nonlocal inside
        if inside or not net.training:
            return original(*args, **kwargs)
        inside = True
        try:
            return ddp(*args, **kwargs)
        finally:
            inside = False

    net.forward = forward
    try:
        yield
    finally:
        del net.forward  # the class's forward again
