"""Peak memory of a block of work, on the CPU or an accelerator: the one place that knows how to ask.

    meter = peak_meter(device)
    if meter.ok:
        with meter:
            run()
        print(meter.peak, meter.method)

Accelerators: torch.accelerator's allocator statistics (allocated memory, not what the caching allocator
reserved). The CPU (Linux): the process's resident-set high-water mark, reset through
/proc/self/clear_refs, minus its resident set before the block (memory the C allocator keeps counts).
"""

from __future__ import annotations

import ctypes
import gc

import torch

from .device import synchronize


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


class _CpuPeak:
    """Peak resident-set growth of this process over a block (Linux: clear_refs resets VmHWM)."""

    method = ("cpu: peak resident set (VmHWM) of the process during the run minus its resident set before it "
              "(peak reset through /proc/self/clear_refs after gc and malloc_trim)")

    def __init__(self):
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.malloc_trim(0)
            _proc_status_kb("VmHWM")
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            self.ok = True
        except (OSError, AttributeError):
            self.ok = False

    def __enter__(self):
        gc.collect()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        self.base = _proc_status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = _proc_status_kb("VmHWM") - self.base


class _AcceleratorPeak:
    method = ("accelerator: torch.accelerator.max_memory_allocated() during the run minus memory_allocated() "
              "before it (after reset_peak_memory_stats)")

    def __init__(self, device: torch.device):
        self.device = device
        try:                                               # not every device extension implements these
            torch.accelerator.reset_peak_memory_stats(device)
            torch.accelerator.max_memory_allocated(device)
            self.ok = True
        except (RuntimeError, AttributeError, NotImplementedError):
            self.ok = False

    def __enter__(self):
        gc.collect()
        synchronize(self.device)
        torch.accelerator.reset_peak_memory_stats(self.device)
        self.base = torch.accelerator.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.peak = torch.accelerator.max_memory_allocated(self.device) - self.base


def peak_meter(device: torch.device):
    """A context manager measuring peak memory growth on `device`; check `.ok` before using it."""
    return _CpuPeak() if device.type == "cpu" else _AcceleratorPeak(device)
