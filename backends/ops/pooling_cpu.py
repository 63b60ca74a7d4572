"""CPU implementation of prompt_guided_pool: accumulate one strided tap of x per window position.

Never copies a window: the forward adds kt*kh*kw strided views of x, each scaled by its weight,
into one float32 output; the backward writes grad_x tap by tap and reduces grad_weights the same
way. Works for any kernel/stride, overlapping windows and leftovers included.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .pooling import offsets, tap, window_weights


class _PromptGuidedPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, relevance, kernel, stride, temperature):
        w = window_weights(relevance, kernel, stride, temperature)  # (B, T', H', W', K)
        out_size = tuple(w.shape[1:4])
        out = x.new_zeros((*w.shape[:4], x.shape[-1]), dtype=w.dtype)
        for k, offset in enumerate(offsets(kernel)):
            out.addcmul_(tap(x, offset, stride, out_size), w[..., k, None])
        ctx.save_for_backward(x, w)
        ctx.geometry = (kernel, stride, out_size, temperature, relevance.dtype)
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        kernel, stride, out_size, temperature, relevance_dtype = ctx.geometry
        go = grad_out.to(w.dtype)
        taps = list(offsets(kernel))
        grad_x = grad_relevance = None
        if ctx.needs_input_grad[0]:
            grad_x = _grad_x(x, go, w, taps, kernel, stride, out_size)
        if ctx.needs_input_grad[1]:
            gw = torch.stack([torch.linalg.vecdot(tap(x, o, stride, out_size).to(go.dtype), go) for o in taps], dim=-1)
            g_logits = w * (gw - (w * gw).sum(-1, keepdim=True)) / temperature
            grad_relevance = x.new_zeros(x.shape[:4], dtype=w.dtype)
            for k, offset in enumerate(taps):
                tap(grad_relevance, offset, stride, out_size).add_(g_logits[..., k])
            grad_relevance = grad_relevance.to(relevance_dtype)
        return grad_x, grad_relevance, None, None, None


def _grad_x(x, go, w, taps, kernel, stride, out_size):
    overlapping = any(s < k for k, s in zip(kernel, stride))
    if overlapping:  # taps share positions: accumulate in float32
        grad = x.new_zeros(x.shape, dtype=w.dtype)
        for k, offset in enumerate(taps):
            tap(grad, offset, stride, out_size).addcmul_(go, w[..., k, None])
        return grad.to(x.dtype)
    tiles_exactly = all(s == k and n * k == size for k, s, n, size in zip(kernel, stride, out_size, x.shape[1:4]))
    grad = torch.empty_like(x) if tiles_exactly else torch.zeros_like(x)  # untouched positions get 0
    for k, offset in enumerate(taps):
        torch.mul(go, w[..., k, None], out=tap(grad, offset, stride, out_size))
    return grad


def pool_cpu(x, relevance, kernel, stride, temperature):
    return _PromptGuidedPool.apply(x, relevance, kernel, stride, temperature)
