"""`ppllava bench planted`: both ops on paper-sized features, with a planted answer.

A 32-frame, 24x24-patch video of CLIP-sized embeddings is random except for one token in every
pooling window of frame 20, which leans towards the prompt's text embedding and carries a planted
feature. The relevance map should put its mass on those tokens, and prompt-guided pooling should
keep more of their feature than average pooling, which dilutes it to 1/18.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import backends
from backends.device import dtype_name, synchronize


def run_demo(device: torch.device, dtype: torch.dtype = torch.float32, frames=32, size=24, embed_dim=768,
             feature_dim=1024, kernel=(2, 3, 3), planted_frame=20, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(1, embed_dim, generator=gen), dim=-1)
    video = F.normalize(torch.randn(1, frames, size, size, embed_dim, generator=gen), dim=-1)
    planted = (slice(None), planted_frame, slice(kernel[1] // 2, None, kernel[1]), slice(kernel[2] // 2, None, kernel[2]))
    video[planted] += 0.3 * text  # the tokens the question is about: one per window
    features = torch.randn(1, frames, size, size, feature_dim, generator=gen)
    signal = torch.randn(feature_dim, generator=gen)
    features[planted] += signal  # what those tokens carry
    video, text, features = (t.to(device, dtype) for t in (video, text, features))

    synchronize(device)
    start = time.perf_counter()
    relevance = backends.relevance_map(video, text, logit_scale=100.0)
    pooled = backends.prompt_guided_pool(features, relevance, kernel=kernel)
    synchronize(device)
    seconds = time.perf_counter() - start
    averaged = F.avg_pool3d(features.permute(0, 4, 1, 2, 3).float(), kernel).permute(0, 2, 3, 4, 1)

    mass = relevance[planted].float().sum().item()
    signal_unit = F.normalize(signal, dim=0).to(device)

    def signal_share(tokens):  # how much of the planted feature survives in the pooled frame
        return (tokens[0, planted_frame // kernel[0]].float() @ signal_unit).mean().item() / signal.norm().item()

    return {
        "device": str(device), "dtype": dtype_name(dtype),
        "tokens_before": frames * size * size, "tokens_after": pooled.shape[1:4].numel(),
        "pooled_shape": tuple(pooled.shape), "seconds": seconds,
        "relevance_mass_on_planted": mass, "planted_tokens": relevance[planted].numel(),
        "signal_kept_prompt_guided": signal_share(pooled), "signal_kept_avg_pool": signal_share(averaged),
        "implementations": {r.op: r.impl for r in backends.describe(device.type)},
    }


def format_demo(r: dict) -> str:
    return "\n".join([
        f"device {r['device']}, {r['dtype']}; implementations: "
        + ", ".join(f"{op}={impl}" for op, impl in r["implementations"].items()),
        f"visual tokens: {r['tokens_before']} before pooling -> {r['tokens_after']} after "
        f"({r['tokens_before'] / r['tokens_after']:.0f}x fewer), pooled shape {r['pooled_shape']}",
        f"relevance_map + prompt_guided_pool: {r['seconds'] * 1e3:.1f} ms",
        f"relevance mass on the {r['planted_tokens']} tokens the prompt is about (one per window of one frame): "
        f"{r['relevance_mass_on_planted']:.1%}",
        f"their feature kept after pooling: prompt-guided {r['signal_kept_prompt_guided']:.2f}, "
        f"average pooling {r['signal_kept_avg_pool']:.2f} (1.00 = all of it, 1/18 = diluted evenly)",
    ])
