"""DataLoader assembly and the skip accounting that keeps unreadable samples visible.

SkipMonitor sees every batch in the main process (skips happen in the workers): it counts skipped
samples, logs the first few paths with their reasons as they happen, and stops the run with a
DataError as soon as the skips exceed max_skip_fraction of the samples this process reads in one
pass (its `total`), so a broken data mount fails in minutes, not after a wasted epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .errors import DataError

log = logging.getLogger(__name__)


class SkipMonitor:
    def __init__(self, total: int, max_fraction: float, show: int = 5):
        self.total, self.max_fraction, self.show = total, max_fraction, show
        self.seen = self.skipped = 0
        self.first: list[tuple[str, str]] = []

    @property
    def allowed(self) -> int:
        return int(self.max_fraction * self.total)

    def update(self, batch: dict) -> None:
        skipped = batch.get("skipped", [])
        self.seen += len(skipped) + (len(batch["input_ids"]) if "input_ids" in batch else 0)
        for s in skipped:
            self.skipped += 1
            if len(self.first) < self.show:
                self.first.append((s.path, s.reason))
                log.warning("skipped sample %d (%d so far): %s: %s", s.index, self.skipped, s.path, s.reason)
        if self.skipped > self.allowed:
            raise DataError(f"{self.skipped} samples skipped (after {self.seen} of {self.total}), more than "
                            f"max_skip_fraction {self.max_fraction:g} allows ({self.allowed}); first: {self.listing()}")

    def listing(self) -> str:
        return "; ".join(f"{path} ({reason})" for path, reason in self.first)

    def summary(self) -> str:
        if not self.skipped:
            return f"read {self.seen} samples, none skipped"
        return f"read {self.seen} samples, skipped {self.skipped}: {self.listing()}"

    def watch(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield the model batches of `batches`, without their 'skipped' entry; log the summary at the end."""
        for batch in batches:
            self.update(batch)
            if "input_ids" in batch:
                yield {k: v for k, v in batch.items() if k != "skipped"}
        log.info("data pass: %s", self.summary())


def build_loader(dataset, collator, batch_size: int, workers: int = 0, sampler: Sampler | None = None,
                 shuffle: bool = True, seed: int = 0, **kwargs) -> DataLoader:
    """A DataLoader over `dataset` (shuffled by `seed` unless a sampler, e.g. DistributedSampler, is given)."""
    generator = torch.Generator().manual_seed(seed) if sampler is None and shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else None,
                      generator=generator, num_workers=workers, collate_fn=collator,
                      persistent_workers=False, pin_memory=False, **kwargs)
