"""Memory traffic of the ops and the device's peak bandwidth, to read a timing as GB/s and fraction of peak."""

from __future__ import annotations

import math

import torch

from backends.ops.pooling import output_size


def pool_bytes(x: torch.Tensor, kernel, stride) -> int:
    """Bytes prompt_guided_pool must move at least: every position of x inside a window read once, plus
    the output written (the relevance map, one value per position, is left out)."""
    out = output_size(tuple(x.shape[1:4]), kernel, stride)
    covered = [min(s, k) * (n - 1) + k for k, s, n in zip(kernel, stride, out)]  # positions some window reads
    return (x.shape[0] * math.prod(covered) + x.shape[0] * math.prod(out)) * x.shape[-1] * x.element_size()


def relevance_bytes(video_embeds: torch.Tensor) -> int:
    """Bytes relevance_map must move at least: the video embeddings read once, one value per position written."""
    return (video_embeds.numel() + video_embeds[..., 0].numel()) * video_embeds.element_size()


def peak_memory_GBps(device: torch.device) -> float | None:
    """Theoretical peak from the device properties (2 transfers per memory clock x bus width), where the
    device reports them (CUDA does); None otherwise."""
    props = getattr(getattr(torch, device.type, None), "get_device_properties", None)
    if props is None:
        return None
    try:
        p = props(device)
    except (RuntimeError, AssertionError, ValueError):
        return None
    clock_khz, bus_bits = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def GBps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9
