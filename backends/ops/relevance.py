"""relevance_map: softmax over all T*H*W positions of logit_scale * cos(video token, text).

S[b, t, h, w] = softmax_{t,h,w}( logit_scale * <v[b,t,h,w] / |v|, c[b] / |c|> ), one global softmax
per sample; positions of frames where mask[b, t] is False get exactly 0. Computed in (at least)
float32, returned in the video embeddings' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks


def check_args(video_embeds, text_embeds, logit_scale, mask=None):
    v = checks.tensor("video_embeds", video_embeds, 5, "(B, T, H, W, C)")
    t = checks.tensor("text_embeds", text_embeds, 2, "(B, C)")
    B, T, _, _, C = v.shape
    if tuple(t.shape) != (B, C):
        raise ValueError(f"text_embeds: expected shape (B, C) = ({B}, {C}) to match video_embeds, got {tuple(t.shape)}")
    logit_scale = checks.positive_number("logit_scale", logit_scale)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, T):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask: expected a bool tensor of shape (B, T) = ({B}, {T}), got {got}")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("mask: every sample needs at least one unmasked frame")
    checks.same_device(video_embeds=v, text_embeds=t, mask=mask,
                       logit_scale=logit_scale if isinstance(logit_scale, torch.Tensor) else None)
    return v, t, logit_scale, mask


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _global_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        logits = logits.masked_fill(~mask[:, :, None, None], float("-inf"))
    return logits.flatten(1).softmax(dim=-1).view_as(logits)


def relevance_native(video_embeds, text_embeds, logit_scale, mask):
    """The spec: normalise both, cosine, scale, one softmax over every position of a sample."""
    acc = _accumulation_dtype(video_embeds.dtype)
    v = F.normalize(video_embeds.to(acc), dim=-1)
    t = F.normalize(text_embeds.to(acc), dim=-1)
    logits = logit_scale * torch.einsum("bthwc,bc->bthw", v, t)
    return _global_softmax(logits, mask).to(video_embeds.dtype)


def relevance_cpu(video_embeds, text_embeds, logit_scale, mask):
    """Same numbers without writing a normalised copy of the video: cos = (v . c_hat) / |v|."""
    acc = _accumulation_dtype(video_embeds.dtype)
    v = video_embeds.to(acc).flatten(1, 3)  # (B, N, C); no copy when already float32
    t = F.normalize(text_embeds.to(acc), dim=-1)
    dots = torch.bmm(v, t.unsqueeze(-1)).squeeze(-1)
    norms = torch.linalg.vector_norm(v, dim=-1).clamp_min(1e-12)
    logits = (logit_scale * dots / norms).view(video_embeds.shape[:4])
    return _global_softmax(logits, mask).to(video_embeds.dtype)
