"""Wall-clock timing of a callable on a device: warm-up, then the median of repeated runs."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from backends.device import synchronize

MIN_SAMPLE_MS = 5.0  # a sample repeats a short call until it spans this, so launch overhead overlaps the work


def _run_ms(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of `fn()` over `repeats` samples after `warmup` runs (device synchronised).

    A call shorter than MIN_SAMPLE_MS is repeated back to back within each sample (one synchronisation
    per sample) and the sample divided by the count: an asynchronous device then times the work, not the
    host's launch latency."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    probe = _run_ms(fn, device, 1)
    calls = min(1000, max(1, math.ceil(MIN_SAMPLE_MS / max(probe, 1e-3))))
    return statistics.median(_run_ms(fn, device, calls) / calls for _ in range(repeats))
