"""The training data as one resumable stream of micro-batches, epoch after epoch.

Every process reads its own shard (DistributedSampler: a seeded shuffle per epoch, the same on every
machine). A position is (epoch, micro-batches consumed in that epoch); resuming there skips the
consumed samples in the sampler, so nothing before the position is decoded again.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DistributedSampler

from ..data import SkipMonitor, build_loader


def _ignore_sigterm(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the training process, which saves a checkpoint first
    (torchrun and Slurm signal the whole process group, workers included)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that starts `start` samples into this epoch's shard."""

    start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


@dataclass(frozen=True)
class Position:
    epoch: int = 0
    index: int = 0          # micro-batches of `epoch` consumed


class MicroBatches:
    def __init__(self, dataset, collator, micro_batch_size: int, rank: int, world_size: int, seed: int,
                 workers: int, max_skip_fraction: float):
        self.dataset, self.micro, self.seed = dataset, micro_batch_size, seed
        self.sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=False)
        self.loader = build_loader(dataset, collator, micro_batch_size, workers, sampler=self.sampler, drop_last=True,
                                   worker_init_fn=_ignore_sigterm)
        self.max_skip_fraction = max_skip_fraction
        self.monitor = SkipMonitor(self.sampler.num_samples, max_skip_fraction)
        self.position = Position()

    @property
    def per_epoch(self) -> int:
        """Micro-batches per process in one epoch (the last, incomplete one is dropped)."""
        return self.sampler.num_samples // self.micro

    def batches(self, start: Position) -> Iterator[dict]:
        """Collated micro-batches (with their 'skipped' list) from `start` on, forever; self.position follows."""
        epoch, index = start.epoch, start.index
        while True:
            if index >= self.per_epoch:
                epoch, index = epoch + 1, 0
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            self.sampler.start = index * self.micro
            if index == 0:                                   # max_skip_fraction is per pass over the data
                self.monitor = SkipMonitor(self.sampler.num_samples, self.max_skip_fraction)
            # workers' seeds come from this, not the global RNG, so resuming mid-epoch leaves the global
            # RNG (dropout) exactly where the uninterrupted run had it
            self.loader.generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            for batch in self.loader:
                self.monitor.update(batch)
                index += 1
                self.position = Position(epoch, index)
                yield batch
            index = self.per_epoch
