"""backends: device facts and the two PPLLaVA custom ops. Knows nothing about models.

    import backends
    S = backends.relevance_map(video_embeds, text_embeds, logit_scale=100.0)      # (B, T, H, W)
    y = backends.prompt_guided_pool(x, S, kernel=(2, 3, 3), temperature=0.01)     # (B, T', H', W', D)
"""

from .device import DeviceFacts, DeviceUnavailable, current_device_type, device_facts, resolve_device
from .dispatch import CustomOp, ImplementationUnavailable, configure_ops, describe, get_op, registered_ops
from .ops import prompt_guided_pool as _pool_op
from .ops import relevance_map as _relevance_op
from .ops.pooling import output_size


def relevance_map(video_embeds, text_embeds, logit_scale, mask=None):
    """softmax over all T*H*W positions of logit_scale * cos(video_embeds, text_embeds) -> (B, T, H, W).

    video_embeds (B, T, H, W, C), text_embeds (B, C), logit_scale > 0 (CLIP's exp(logit_scale)),
    mask: optional bool (B, T), False for padded frames (their relevance is 0).
    """
    return _relevance_op(video_embeds, text_embeds, logit_scale, mask)


def prompt_guided_pool(x, relevance, kernel=(2, 3, 3), stride=None, temperature=0.01):
    """Pool x (B, T, H, W, D) with per-window weights softmax(relevance_window / temperature).

    stride defaults to kernel; output (B, T', H', W', D) with T' = (T - kt) // st + 1 (same for H, W).
    """
    return _pool_op(x, relevance, kernel, stride, temperature)


__all__ = [
    "relevance_map", "prompt_guided_pool", "output_size",
    "CustomOp", "ImplementationUnavailable", "configure_ops", "describe", "get_op", "registered_ops",
    "DeviceFacts", "DeviceUnavailable", "current_device_type", "device_facts", "resolve_device",
]
