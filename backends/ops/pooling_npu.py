"""NPU implementation of prompt_guided_pool: gather the windows, softmax their weights, one batched matmul.

Written for what torch_npu runs well on Atlas A2 (910B): no avg_pool3d / adaptive_avg_pool3d (unsupported
there for D > 1), no unfold, no float64. Plain torch ops only, so the same code runs, and is tested, on CPU
tensors:
    windows  non-overlapping (stride == kernel): crop the leftovers, split each axis into (n, k), one
             permute copy -> (B, T', H', W', K, D); any other stride: stack the K strided taps (one copy)
    weights  softmax(relevance_window / temperature) with torch.softmax, in float32
    pooling  torch.bmm of (B*N, 1, K) weights with (B*N, K, D) windows, in float32 (the cube units;
             exact float32 while torch.npu.matmul.allow_hf32 is off, as backends.device sets it)
Every kernel and stride is supported, overlapping windows and leftovers included; autograd gives the
backward. The output has x's dtype.
"""

from __future__ import annotations

import math

import torch

from .pooling import offsets, output_size, tap


def gather_windows(t: torch.Tensor, kernel, stride, out_size) -> torch.Tensor:
    """(B, T, H, W, *rest) -> (B, T', H', W', K, *rest), K = kt*kh*kw in the order of pooling.offsets."""
    if tuple(kernel) != tuple(stride):
        return torch.stack([tap(t, offset, stride, out_size) for offset in offsets(kernel)], dim=4)
    (nt, nh, nw), (kt, kh, kw) = out_size, kernel
    rest = tuple(t.shape[4:])
    t = t[:, :nt * kt, :nh * kh, :nw * kw]  # leftovers dropped, as in a conv
    t = t.reshape(t.shape[0], nt, kt, nh, kh, nw, kw, *rest)
    t = t.permute(0, 1, 3, 5, 2, 4, 6, *range(7, 7 + len(rest)))
    return t.reshape(t.shape[0], nt, nh, nw, kt * kh * kw, *rest)


def pool_npu(x, relevance, kernel, stride, temperature):
    acc = torch.promote_types(relevance.dtype, torch.float32)
    out_size = output_size(tuple(x.shape[1:4]), kernel, stride)
    batch, dim, windows, taps = x.shape[0], x.shape[-1], math.prod(out_size), math.prod(kernel)
    logits = gather_windows(relevance.to(acc), kernel, stride, out_size)        # (B, T', H', W', K)
    weights = torch.softmax(logits / temperature, dim=-1)
    overlapping = any(s < k for k, s in zip(kernel, stride))  # then x's gradients add up: gather in float32
    xw = gather_windows(x.to(acc) if overlapping else x, kernel, stride, out_size).to(acc)  # (B, T', H', W', K, D)
    out = torch.bmm(weights.reshape(batch * windows, 1, taps), xw.reshape(batch * windows, taps, dim))
    return out.view(batch, *out_size, dim).to(x.dtype)
