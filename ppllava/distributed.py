"""The process group of a training or evaluation run: from torchrun's environment (or alone), torn down cleanly.

Device and collective backend come from backends.device (the accelerator PyTorch sees, and its
backend: nccl, hccl, or gloo on the CPU); a launcher may pin them with PPLLAVA_DEVICE and
PPLLAVA_DIST_BACKEND (see configs/cluster/). Run without torchrun, the trainer is a group of one.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from backends.device import current_device_type, dist_backend, local_device, resolve_device, set_current_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all processes (one collective)."""
        t = torch.tensor(values, dtype=torch.float32, device=self.device)     # float64 is not on every device
        if self.world_size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def from_main(self, value):
        """The main process's `value`, on every process (so that all decide alike)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)          # on the device the backend uses for objects
        return box[0]

    def gather(self, value) -> list | None:
        """Every process's `value`, in rank order, on the main process (None elsewhere)."""
        if self.world_size == 1:
            return [value]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


# what start() put in os.environ for a group of one: stop() removes it, so that a process that trained in-process
# (a test, a notebook) does not hand RANK and MASTER_PORT to the programs it starts next, which would then all
# rendezvous on that one port
_ALONE_ENV: dict[str, str] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(deepspeed: bool = True, device: str | None = None) -> Group:
    """Join (or, without torchrun, create) the process group and bind this process to its device.

    deepspeed=False (evaluation) uses torch.distributed alone, so DeepSpeed need not be installed.
    device: the device type for every process (the local rank picks the index), or, for a group of one,
    the device itself ("cuda:1")."""
    alone = "RANK" not in os.environ
    if alone:                                                  # a plain `ppllava train`: a group of one
        _ALONE_ENV.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
        os.environ.update(_ALONE_ENV)          # DeepSpeed reads them; stop() takes them away again
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device_type = (device or os.environ.get("PPLLAVA_DEVICE") or current_device_type()).partition(":")[0]
    if alone and device:
        device = resolve_device(device)
    else:
        device = local_device(device_type, local)
    set_current_device(device)
    backend = os.environ.get("PPLLAVA_DIST_BACKEND") or dist_backend(device.type)
    if alone and not dist.is_initialized():
        # an in-process store: a group of one opens no socket, so runs side by side never race for a port
        # (MASTER_PORT above only names DeepSpeed's shared-memory segment)
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if deepspeed:
        import deepspeed as ds                                 # heavy; only training needs it
        ds.init_distributed(dist_backend=backend, auto_mpi_discovery=False)   # takes the group made above, if any
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("rank %d/%d (local %d) on %s, backend %s", rank, world, local, device, backend)
    return Group(rank, world, local, device, backend)


def stop(barrier: bool = True) -> None:
    """Tear the process group down (before exit: ZeRO-3 otherwise crashes at interpreter shutdown).

    barrier=False after an error: the other processes may be gone, so wait for nobody."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
    for key, value in _ALONE_ENV.items():
        if os.environ.get(key) == value:
            del os.environ[key]
    _ALONE_ENV.clear()
