"""cuda implementation of relevance_map: a Triton kernel for the one heavy step, the cosines.

cos[b, n] = <v[b, n], c_hat[b]> / max(|v[b, n]|, eps) reads the video embeddings once, one program per
block of positions, accumulating the dot and the squared norm in float32 over blocks of C; no
normalised copy of the video is written. The rest is one value per position (scale, mask, global
softmax) and stays in PyTorch, shared with the spec. The backward kernel reads v once more and writes
grad_v = g / n * (c_hat - cos / n * v) together with per-block partial sums of g / n * v, which add
up to grad_c_hat. float64 runs the native spec, with a one-time note.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .relevance import _global_softmax, relevance_native
from .triton_support import fallback_once, launch_on, next_power_of_2, unsupported_dtype

EPS = 1e-12  # F.normalize's: norms below it are clamped
BLOCK_N = 16
MAX_BLOCK_C = 256
NUM_WARPS = 4


@triton.jit
def _cosine_forward(v_ptr, c_ptr, cos_ptr, norm_ptr, N, C, eps, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = n < N
    rows = (b * N + n) * C
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    squares = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        in_c = c < C
        v = tl.load(v_ptr + rows[:, None] + c[None, :], mask=in_n[:, None] & in_c[None, :], other=0.0).to(tl.float32)
        text = tl.load(c_ptr + b * C + c, mask=in_c, other=0.0)
        dot += tl.sum(v * text[None, :], axis=1)
        squares += tl.sum(v * v, axis=1)
    norm = tl.sqrt(squares)
    tl.store(cos_ptr + b * N + n, dot / tl.maximum(norm, eps), mask=in_n)
    tl.store(norm_ptr + b * N + n, norm, mask=in_n)


@triton.jit
def _cosine_backward(v_ptr, c_ptr, cos_ptr, norm_ptr, gcos_ptr, gv_ptr, gc_ptr, N, C, eps,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, NEED_GV: tl.constexpr, NEED_GC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    block = tl.program_id(0)
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = n < N
    rows = (b * N + n) * C
    norm = tl.load(norm_ptr + b * N + n, mask=in_n, other=1.0)
    clamped = tl.maximum(norm, eps)
    scale = tl.load(gcos_ptr + b * N + n, mask=in_n, other=0.0) / clamped  # g / n
    along_v = tl.where(norm > eps, tl.load(cos_ptr + b * N + n, mask=in_n, other=0.0) / clamped, 0.0)  # cos / n
    partials = (b * tl.num_programs(0) + block) * C  # this block's row of grad_c partial sums
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        in_c = c < C
        in_tile = in_n[:, None] & in_c[None, :]
        v = tl.load(v_ptr + rows[:, None] + c[None, :], mask=in_tile, other=0.0).to(tl.float32)
        if NEED_GV:
            text = tl.load(c_ptr + b * C + c, mask=in_c, other=0.0)
            gv = scale[:, None] * (text[None, :] - along_v[:, None] * v)
            tl.store(gv_ptr + rows[:, None] + c[None, :], gv.to(gv_ptr.dtype.element_ty), mask=in_tile)
        if NEED_GC:
            tl.store(gc_ptr + partials + c, tl.sum(scale[:, None] * v, axis=0), mask=in_c)


def _grid(v):
    B, N, C = v.shape
    return (triton.cdiv(N, BLOCK_N), B), dict(BLOCK_N=BLOCK_N, BLOCK_C=min(MAX_BLOCK_C, next_power_of_2(C)),
                                              num_warps=NUM_WARPS)


class _Cosine(torch.autograd.Function):
    """(v (B, N, C) any kernel dtype, c_hat (B, C) float32 unit rows) -> cos (B, N) float32."""

    @staticmethod
    def forward(ctx, v, c_hat):
        v, c_hat = v.contiguous(), c_hat.contiguous()
        B, N, C = v.shape
        cos = v.new_empty((B, N), dtype=torch.float32)
        norm = torch.empty_like(cos)
        grid, constants = _grid(v)
        with launch_on(v):
            _cosine_forward[grid](v, c_hat, cos, norm, N, C, EPS, **constants)
        ctx.save_for_backward(v, c_hat, cos, norm)
        return cos

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cos):
        v, c_hat, cos, norm = ctx.saved_tensors
        need_gv, need_gc = ctx.needs_input_grad
        if not (need_gv or need_gc):
            return None, None
        B, N, C = v.shape
        grid, constants = _grid(v)
        grad_v = torch.empty_like(v) if need_gv else None
        partials = v.new_empty((B, grid[0], C), dtype=torch.float32) if need_gc else None
        with launch_on(v):
            _cosine_backward[grid](v, c_hat, cos, norm, grad_cos.float().contiguous(), grad_v, partials, N, C, EPS,
                                   NEED_GV=need_gv, NEED_GC=need_gc, **constants)
        return grad_v, partials.sum(dim=1) if need_gc else None


def relevance_triton(video_embeds, text_embeds, logit_scale, mask):
    reason = unsupported_dtype(video_embeds=video_embeds)
    if reason:
        fallback_once("relevance_map", reason)
        return relevance_native(video_embeds, text_embeds, logit_scale, mask)
    c_hat = F.normalize(text_embeds.float(), dim=-1)
    cos = _Cosine.apply(video_embeds.flatten(1, 3), c_hat).view(video_embeds.shape[:4])
    return _global_softmax(logit_scale * cos, mask).to(video_embeds.dtype)
