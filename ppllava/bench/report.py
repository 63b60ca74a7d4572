"""What every bench report says the same way: the machine and settings it ran on, memory in MiB."""

from __future__ import annotations

import os

import torch

from backends.device import device_name, dtype_name


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def run_facts(device: torch.device, dtype: torch.dtype) -> dict:
    """device, device_name, dtype, torch, threads and machine (CPU model, logical CPUs) of a report."""
    return {"device": str(device), "device_name": device_name(device), "dtype": dtype_name(dtype),
            "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count()}}


def facts_line(report: dict) -> str:
    """run_facts of a report as the first line of its table."""
    return (f"device {report['device']} ({report['device_name']}), {report['dtype']}, torch {report['torch']}, "
            f"{report['threads']} threads; host CPU {report['machine']['cpu_model']}, "
            f"{report['machine']['logical_cpus']} logical CPUs")


def mib(value) -> str:
    """Bytes as MiB, '-' for None (not measurable here)."""
    return "-" if value is None else f"{value / 2**20:.0f} MiB"
