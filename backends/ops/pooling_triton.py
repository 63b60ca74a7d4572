"""cuda implementation of prompt_guided_pool: fused Triton kernels that read each window of x once.

Forward, one program per (window, block of D): load the window's K relevance values, form
softmax(S_window / temperature) in registers, load the K rows of x for its D block as one
(K, BLOCK_D) tile and write one output token. Backward, one program per window, looping over D:
grad_x = weight * grad_out for each tap, and the per-tap dot <x_tap, grad_out> that the window's
softmax backward turns into grad_relevance. Everything accumulates in float32.

Windows must not overlap (stride >= kernel on every axis; the defaults have stride == kernel), so every
position is written by at most one program and no atomics are needed. Other calls (overlapping windows,
float64) run the native spec, with a one-time note. Under TRITON_INTERPRET=1 the kernels run on CPU
tensors, which is how CI checks them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .pooling import output_size, pool_native
from .triton_support import fallback_once, launch_on, next_power_of_2, unsupported_dtype

MAX_WINDOW = 512  # taps per window; the (taps, BLOCK_D) tile must fit in registers
TILE = 8192       # elements of one (taps, BLOCK_D) tile
MAX_BLOCK_D = 256
NUM_WARPS = 4


@triton.jit
def _window_taps(win, T, H, W, TO, HO, WO, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                 ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, KP: tl.constexpr):
    """Flat (B, T, H, W) position of each of window `win`'s taps (padded to KP), and which taps are real."""
    wo = win % WO
    ho = (win // WO) % HO
    to = (win // (WO * HO)) % TO
    b = (win // (WO * HO * TO)).to(tl.int64)
    k = tl.arange(0, KP)
    t = to * ST + k // (KH * KW)
    h = ho * SH + (k // KW) % KH
    w = wo * SW + k % KW
    return ((b * T + t) * H + h) * W + w, k < KT * KH * KW


@triton.jit
def _window_weights(s_ptr, pos, real, temperature):
    """softmax(S_window / temperature) over the real taps, in float32 (padding taps get 0)."""
    logits = tl.load(s_ptr + pos, mask=real, other=float("-inf")).to(tl.float32) / temperature
    e = tl.exp(logits - tl.max(logits, axis=0))
    return e / tl.sum(e, axis=0)


@triton.jit
def _pool_forward(x_ptr, s_ptr, out_ptr, T, H, W, D, TO, HO, WO, temperature,
                  KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                  ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr):
    win = tl.program_id(0)
    pos, real = _window_taps(win, T, H, W, TO, HO, WO, KT, KH, KW, ST, SH, SW, KP)
    weights = _window_weights(s_ptr, pos, real, temperature)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = d < D
    xs = tl.load(x_ptr + pos[:, None] * D + d[None, :], mask=real[:, None] & in_d[None, :], other=0.0)
    pooled = tl.sum(xs.to(tl.float32) * weights[:, None], axis=0)
    tl.store(out_ptr + win.to(tl.int64) * D + d, pooled.to(out_ptr.dtype.element_ty), mask=in_d)


@triton.jit
def _pool_backward(x_ptr, s_ptr, go_ptr, gx_ptr, gs_ptr, T, H, W, D, TO, HO, WO, temperature,
                   KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                   ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr,
                   NEED_GX: tl.constexpr, NEED_GS: tl.constexpr):
    win = tl.program_id(0)
    pos, real = _window_taps(win, T, H, W, TO, HO, WO, KT, KH, KW, ST, SH, SW, KP)
    weights = _window_weights(s_ptr, pos, real, temperature)
    grad_weights = tl.zeros([KP], dtype=tl.float32)  # <x_tap, grad_out> per tap
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        in_d = d < D
        go = tl.load(go_ptr + win.to(tl.int64) * D + d, mask=in_d, other=0.0).to(tl.float32)
        taps = pos[:, None] * D + d[None, :]
        in_tile = real[:, None] & in_d[None, :]
        if NEED_GX:
            tl.store(gx_ptr + taps, (weights[:, None] * go[None, :]).to(gx_ptr.dtype.element_ty), mask=in_tile)
        if NEED_GS:
            xs = tl.load(x_ptr + taps, mask=in_tile, other=0.0).to(tl.float32)
            grad_weights += tl.sum(xs * go[None, :], axis=1)
    if NEED_GS:  # softmax backward: w * (g - <w, g>), then through the division by temperature
        g_logits = weights * (grad_weights - tl.sum(weights * grad_weights, axis=0)) / temperature
        tl.store(gs_ptr + pos, g_logits.to(gs_ptr.dtype.element_ty), mask=real)


def _unsupported(x, relevance, kernel, stride) -> str | None:
    if any(s < k for k, s in zip(kernel, stride)):
        return "overlapping windows (stride < kernel)"
    if math.prod(kernel) > MAX_WINDOW:
        return f"windows of more than {MAX_WINDOW} positions"
    return unsupported_dtype(x=x, relevance=relevance)


def _launch_args(x, kernel, stride, temperature):
    """The number of windows, the arguments both kernels take after their pointers, the launch constants."""
    B, T, H, W, D = x.shape
    out_size = output_size((T, H, W), kernel, stride)
    taps = next_power_of_2(math.prod(kernel))
    block_d = min(MAX_BLOCK_D, max(16, TILE // taps), next_power_of_2(D))
    constants = dict(KT=kernel[0], KH=kernel[1], KW=kernel[2], ST=stride[0], SH=stride[1], SW=stride[2],
                     KP=taps, BLOCK_D=block_d, num_warps=NUM_WARPS)
    return B * math.prod(out_size), (T, H, W, D, *out_size, float(temperature)), constants


def _covers_every_position(x, kernel, stride) -> bool:
    out_size = output_size(tuple(x.shape[1:4]), kernel, stride)
    return all(s == k and n * k == size for k, s, n, size in zip(kernel, stride, out_size, x.shape[1:4]))


class _PromptGuidedPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, relevance, kernel, stride, temperature):
        x, relevance = x.contiguous(), relevance.contiguous()
        windows, args, constants = _launch_args(x, kernel, stride, temperature)
        D = x.shape[-1]
        out = x.new_empty((x.shape[0], *output_size(tuple(x.shape[1:4]), kernel, stride), D))
        with launch_on(x):
            _pool_forward[(windows, triton.cdiv(D, constants["BLOCK_D"]))](x, relevance, out, *args, **constants)
        ctx.save_for_backward(x, relevance)
        ctx.geometry = (kernel, stride, temperature)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, relevance = ctx.saved_tensors
        kernel, stride, temperature = ctx.geometry
        need_gx, need_gs = ctx.needs_input_grad[:2]
        if not (need_gx or need_gs):
            return None, None, None, None, None
        windows, args, constants = _launch_args(x, kernel, stride, temperature)
        new = torch.empty_like if _covers_every_position(x, kernel, stride) else torch.zeros_like  # others get 0
        grad_x = new(x) if need_gx else None
        grad_s = new(relevance) if need_gs else None
        with launch_on(x):
            _pool_backward[(windows,)](x, relevance, grad_out.contiguous(), grad_x, grad_s, *args,
                                       NEED_GX=need_gx, NEED_GS=need_gs, **constants)
        return grad_x, grad_s, None, None, None


def pool_triton(x, relevance, kernel, stride, temperature):
    reason = _unsupported(x, relevance, kernel, stride)
    if reason:
        fallback_once("prompt_guided_pool", reason)
        return pool_native(x, relevance, kernel, stride, temperature)
    return _PromptGuidedPool.apply(x, relevance, kernel, stride, temperature)
