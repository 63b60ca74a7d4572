"""What the Triton (cuda) kernels share: the dtypes they take, the one-time fallback note, the launch device.

Kept free of `import triton` so that it can be read (and tested) on a machine without triton.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os

import torch

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # loaded as is, accumulated in float32

log = logging.getLogger("backends")
_noted: set[tuple[str, str]] = set()


def require_launchable() -> None:
    """Raise ImportError (dispatch then runs native, with a warning) where the kernels cannot run:
    triton missing, or no CUDA device and not interpreting (TRITON_INTERPRET=1 runs them on CPU tensors)."""
    importlib.import_module("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ImportError("no CUDA device for the Triton kernels (TRITON_INTERPRET=1 runs them on CPU tensors)")


def fallback_once(op: str, reason: str) -> None:
    """Log, once per op and reason, that a call runs the native spec instead of the Triton kernel."""
    if (op, reason) not in _noted:
        _noted.add((op, reason))
        log.warning("%s[cuda]: %s; running native for such calls", op, reason)


def unsupported_dtype(**tensors: torch.Tensor) -> str | None:
    """'x is float64' for the first tensor whose dtype the kernels do not take, else None."""
    for name, t in tensors.items():
        if t.dtype not in KERNEL_DTYPES:
            return f"{name} is {str(t.dtype).removeprefix('torch.')} (kernels take float32, bfloat16, float16)"
    return None


def launch_on(t: torch.Tensor):
    """Launch on t's GPU, not the current one (Triton launches on the current device); no-op on the CPU
    (the interpreter, TRITON_INTERPRET=1, runs CPU tensors)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
