"""Wall-clock timing of a callable on a device: warm-up, then the median of repeated runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from backends.device import synchronize


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of `fn()` over `repeats` runs after `warmup` runs (device synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
