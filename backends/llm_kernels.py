"""LLM kernels with a fused NPU version: RMSNorm, rotary embedding, attention. Knows nothing about models.

Each kernel has a native twin in plain torch that takes exactly the arguments the fused kernel takes
(same layouts, mask convention and dtypes), so everything around a fused call runs, and is tested, on the
CPU. The fused versions are in llm_kernels_npu, the only module that calls torch_npu's fused kernels,
imported only when one is asked for.

    rms_norm(x, weight, eps)                 weight * (x / rms(x)), normalised in float32 (transformers' RMSNorm)
    rotary(x, cos, sin)                      x * cos + rotate_half(x) * sin; x (B, N, S, D), cos/sin (B, 1, S, D)
    attention(q, k, v, masked_out, scale, keep_prob)
                                             (B, N, Sq, D) each (key/value heads already repeated); masked_out
                                             bool, broadcastable to (B, N, Sq, Skv), True where a query must not
                                             attend; -> (B, N, Sq, D)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .dispatch import ImplementationUnavailable

KERNELS = ("rms_norm", "rotary", "attention")
IMPLS = ("native", "npu")


def rms_norm_native(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary_native(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attention_native(query, key, value, masked_out, scale: float, keep_prob: float) -> torch.Tensor:
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if masked_out is not None:
        scores = scores.masked_fill(masked_out, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if keep_prob < 1.0:
        probs = F.dropout(probs, p=1.0 - keep_prob)
    return torch.matmul(probs, value)


_NATIVE = {"rms_norm": rms_norm_native, "rotary": rotary_native, "attention": attention_native}


def load(kernel: str, impl: str) -> Callable:
    """The `impl` ('native' or 'npu') version of `kernel`; 'npu' needs torch_npu (one clear error without it)."""
    if kernel not in KERNELS or impl not in IMPLS:
        raise ValueError(f"unknown LLM kernel {kernel!r} / implementation {impl!r}; "
                         f"kernels: {', '.join(KERNELS)}; implementations: {', '.join(IMPLS)}")
    if impl == "native":
        return _NATIVE[kernel]
    try:
        from . import llm_kernels_npu
    except Exception as e:  # ImportError, or OSError when CANN is missing
        raise ImplementationUnavailable(
            f"the fused NPU kernel {kernel!r} needs torch_npu, which failed to import ({e.__class__.__name__}: {e}); "
            f"install torch-npu at the version matching torch {torch.__version__.split('+')[0]} and source CANN's "
            f"set_env.sh (see README, 'Ascend NPU'), or leave npu_fused_kernels empty to use the native modules"
        ) from None
    return getattr(llm_kernels_npu, f"{kernel}_npu")
