"""prompt_guided_pool: a 3D pooling whose kernel weights come from the relevance map.

For each window (kernel (kt, kh, kw), stride (st, sh, sw), leftovers dropped as in a conv):
    weights = softmax(relevance_window / temperature)      over the window's kt*kh*kw positions
    out     = sum_window weights * x                          (B, T', H', W', D)
With uniform relevance this is avg_pool3d. Weights and sums are formed in (at least) float32;
the output has x's dtype.
"""

from __future__ import annotations

import itertools

import torch

from . import checks


def check_args(x, relevance, kernel=(2, 3, 3), stride=None, temperature=0.01):
    x = checks.tensor("x", x, 5, "(B, T, H, W, D)")
    relevance = checks.tensor("relevance", relevance, 4, "(B, T, H, W)")
    if tuple(relevance.shape) != tuple(x.shape[:4]):
        raise ValueError(f"relevance: shape {tuple(relevance.shape)} does not match x's (B, T, H, W) = {tuple(x.shape[:4])}")
    kernel = checks.triple("kernel", kernel)
    stride = kernel if stride is None else checks.triple("stride", stride)
    for axis, k, size in zip("THW", kernel, x.shape[1:4]):
        if k > size:
            raise ValueError(f"kernel: {kernel} is larger than the input along {axis} ({k} > {size}); input (T, H, W) = {tuple(x.shape[1:4])}")
    temperature = checks.positive_number("temperature", temperature)
    if isinstance(temperature, torch.Tensor):
        temperature = float(temperature)
    checks.same_device(x=x, relevance=relevance)
    return x, relevance, kernel, stride, temperature


def output_size(size: tuple[int, int, int], kernel, stride) -> tuple[int, int, int]:
    """(T', H', W') = (size - kernel) // stride + 1 per axis."""
    return tuple((n - k) // s + 1 for n, k, s in zip(size, kernel, stride))


def windows(t: torch.Tensor, kernel, stride) -> torch.Tensor:
    """View (B, T, H, W, *rest) as (B, T', H', W', *rest, kt, kh, kw); no copy."""
    for dim, (k, s) in enumerate(zip(kernel, stride), start=1):
        t = t.unfold(dim, k, s)
    return t


def window_weights(relevance, kernel, stride, temperature) -> torch.Tensor:
    """softmax(relevance_window / temperature) as (B, T', H', W', kt*kh*kw), in at least float32."""
    acc = torch.promote_types(relevance.dtype, torch.float32)
    logits = windows(relevance.to(acc), kernel, stride).flatten(-3)
    return torch.softmax(logits / temperature, dim=-1)


def offsets(kernel):
    """Positions inside a window, in the order of window_weights' last axis."""
    return itertools.product(*(range(k) for k in kernel))


def tap(t: torch.Tensor, offset, stride, out_size) -> torch.Tensor:
    """The strided view t[:, o_t + s_t*i, o_h + s_h*j, o_w + s_w*k] for all output positions (i, j, k)."""
    index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, out_size))
    return t[(slice(None), *index)]


def pool_native(x, relevance, kernel, stride, temperature):
    """The spec, written as the definition reads (einsum materialises the windows)."""
    w = window_weights(relevance, kernel, stride, temperature)
    xw = windows(x.to(w.dtype), kernel, stride).flatten(-3)  # (B, T', H', W', D, K)
    return torch.einsum("bthwdk,bthwk->bthwd", xw, w).to(x.dtype)
