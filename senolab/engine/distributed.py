"""Data-parallel training on several devices: PyTorch's DistributedDataParallel, launched by torchrun.

``senolab train CONFIG --devices N`` (or ``train.devices: N``) runs itself again under
``torchrun --standalone --nproc_per_node N`` (:func:`launch`) and waits for it. Each of
the N processes (a *rank*) joins one process group (:func:`process_group`: gloo on CPU,
NCCL on CUDA, one GPU per process, ``cuda:LOCAL_RANK``), builds the same model from the
same seed, and trains it on its share of every global batch; DDP averages the gradients,
so every rank takes the same optimiser step. Rank 0 alone validates, decides early
stopping and the time budget, and writes the run folder; the other ranks learn its
decisions by :func:`broadcast_object` and :func:`broadcast_scalar`, so all stop at the
same step. Checkpoints are read on rank 0 and broadcast, so no folder needs to be shared
between machines. docs/distributed.md has the whole picture.

Outside a torchrun process every helper here answers as the only process of a world of
one (rank 0, nothing to broadcast), so the trainer has one code path.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from senolab.engine.config import ConfigError, TrainConfig
from senolab.models.balancers import GradNorm


def launched() -> bool:
    """Whether this process is a worker started by torchrun (which sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that validates, decides and writes."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if dist.is_initialized() else 0


def shard() -> tuple[int, int]:
    """(rank, world size): which share of each global batch this process trains on."""
    return rank(), world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object; others pass anything, e.g. None)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_scalar(value: float) -> float:
    """Rank 0's number on every rank: one small tensor, cheap enough for every step."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _collective_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    return torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")


def local_device(device: torch.device) -> torch.device:
    """This rank's device: its own GPU (``cuda:LOCAL_RANK``) when training on CUDA."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", local_rank())
    return device


# --------------------------------------------------------------------------- launching
def launch(argv: Sequence[str], devices: int) -> int:
    """Run ``senolab <argv>`` as ``devices`` processes under torchrun on this machine and wait;
    torchrun's exit code (non-zero when any process failed; it stops the others then)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "senolab.cli", *argv]
    return subprocess.call(command)


def check_devices(train: TrainConfig) -> None:
    """Refuse, before anything starts, a device count or precision this machine cannot give."""
    cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    if train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but PyTorch sees no CUDA GPU on this machine")
    # the processes on this machine: torchrun's count per node, or all of them when launched here
    here = int(os.environ.get("LOCAL_WORLD_SIZE", train.devices))
    if cuda and here > torch.cuda.device_count():
        raise ConfigError(f"train.devices asks for {here} processes on this machine but it has "
                          f"{torch.cuda.device_count()} CUDA GPU(s): one process per GPU (several machines: "
                          "see docs/distributed.md)")
    if not cuda and train.precision == "16-mixed":
        raise ConfigError("train.precision '16-mixed' needs a CUDA GPU (float16 autocast with a gradient scaler); "
                          "on CPU use 'bf16-mixed' or '32'")
    if not cuda and train.sync_batchnorm and train.devices > 1:
        raise ConfigError("train.sync_batchnorm needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on CPU "
                          "(gloo); set it to false to train with each process's own BatchNorm statistics")


@contextmanager
def process_group(train: TrainConfig) -> Iterator[None]:
    """Inside a torchrun worker: join the process group for the run and leave it after.

    Elsewhere (a plain ``senolab train``, a test, a study) nothing happens. The world size
    is torchrun's; the trainer refuses a ``train.devices`` other than it (:func:`check_world`)."""
    if not launched() or dist.is_initialized():
        yield
        return
    check_devices(train)
    cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
        dist.barrier()  # leave together: a rank tearing down while another still talks can abort it
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the model
def check_world(train: TrainConfig) -> None:
    """``train.devices`` must be the number of processes training: the global batch is split by it."""
    if train.devices != world_size():
        how = "torchrun started" if launched() else "outside torchrun there is"
        raise ConfigError(f"train.devices is {train.devices} but {how} {world_size()} process(es) to train on; "
                          "`senolab train --devices N` launches N processes (docs/distributed.md)")


def check_replicable(balancer: nn.Module) -> None:
    """Refuse GradNorm on several devices: it sets its task weights from the gradients of the
    losses inside each step, which each rank would compute from its own share of the batch."""
    if isinstance(balancer, GradNorm):
        raise ConfigError("loss.balancer 'gradnorm' sets its task weights from each process's own gradients, "
                          "so with train.devices > 1 the processes would weigh the tasks differently: train it "
                          "with devices: 1, or choose another balancer")


def data_parallel(module: nn.Module, train: TrainConfig, device: torch.device) -> nn.Module:
    """``module`` (the trainer's training step) wrapped in DDP when there are several ranks,
    after its BatchNorm layers became SyncBatchNorm with ``train.sync_batchnorm``; else itself.

    The wrapper shares the parameters, so the model's own ``state_dict`` is the same with or
    without DDP and checkpoints resume on any number of devices. DDP broadcasts rank 0's
    buffers (BatchNorm's running statistics) at every forward. ``find_unused_parameters``:
    a head whose task has no case in a rank's batch, a frozen backbone, a method module
    used only at inference get no gradient in some steps."""
    if world_size() == 1:
        return module
    if train.sync_batchnorm:  # in place: the step module is no BatchNorm layer, only layers inside it are
        nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
