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


def memory_method(meter) -> str:
    """How a bench report's peak memory was measured (backends.memory.peak_meter), or why it could not be."""
    return meter.method if meter.ok else "unavailable here (needs /proc/self/clear_refs and glibc on the CPU)"


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device, step=None,
                warmup: bool = True) -> tuple[dict[str, list], dict[str, int | None], str]:
    """The end-to-end benches' measurement: every run once as a warm-up (unless the caller did it), then `repeats`
    rounds of all of them in turn (so drift of the machine hits each alike), then one more run of each under
    backends.memory's peak meter (after the timed ones: a process's one-time costs stay out of it).

    Returns what each timed call returned (a run times itself), the peak bytes of each (None where the device
    cannot say) and how the peak was measured."""
    from backends.memory import peak_meter

    say = step or (lambda label: None)
    if warmup:
        for label, run in runs.items():
            say(f"warm-up {label}")
            run()
    results = {label: [] for label in runs}
    for r in range(repeats):
        for label, run in runs.items():
            say(f"run {r + 1}/{repeats} {label}")
            results[label].append(run())
    meter, peaks = peak_meter(device), {}
    for label, run in runs.items():
        say(f"peak memory {label}")
        peaks[label] = None
        if meter.ok:
            with meter:
                run()
            peaks[label] = meter.peak
    return results, peaks, memory_method(meter)
