"""NPU implementation of relevance_map: one batched matvec on the cube units, norms on the vector units.

cos = (v . c_hat) * rsqrt(max(|v|^2, 1e-24)): no normalised copy of the video is written; the dot
products are one torch.bmm of (B, N, C) with (B, C, 1) in float32 (exact float32 while
torch.npu.matmul.allow_hf32 is off, as backends.device sets it), the squared norms a sum of squares,
the global softmax over all T*H*W positions plain torch (masked frames filled with -inf). No float64
(Atlas A2 has none): bf16/fp16 inputs are computed in float32. Plain torch ops only, so the same code
runs, and is tested, on CPU tensors.
"""

from __future__ import annotations

import torch

from .relevance import _accumulation_dtype, _global_softmax

_EPS_SQUARED = 1e-24  # F.normalize's eps (1e-12) on the norm, squared


def relevance_npu(video_embeds, text_embeds, logit_scale, mask):
    acc = _accumulation_dtype(video_embeds.dtype)
    v = video_embeds.to(acc).flatten(1, 3)                                      # (B, N, C)
    t = text_embeds.to(acc)
    t = t * torch.rsqrt(t.square().sum(-1, keepdim=True).clamp_min(_EPS_SQUARED))
    dots = torch.bmm(v, t.unsqueeze(-1)).squeeze(-1)                            # (B, N)
    inv_norms = torch.rsqrt(v.square().sum(-1).clamp_min(_EPS_SQUARED))
    logits = (logit_scale * dots * inv_norms).view(video_embeds.shape[:4])
    return _global_softmax(logits, mask).to(video_embeds.dtype)
