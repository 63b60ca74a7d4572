"""FLOPs of one video through a full-size architecture, counted on the meta device (no weights, no memory):
the vision tower, the path from its features to the LLM's visual tokens (relevance, pooling, projector) with
the projector before or after the pooling, and the LLM's prefill of those tokens plus a short prompt.
Counts come from torch.utils.flop_counter (matrix products and attention), so they are the same on every
machine; they decide where the projector runs (README, Converting a base model)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import backends

from ..model.factory import load_config
from ..model.modeling import PPLLaVAForConditionalGeneration


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_flops(architecture: str, frames: int, text_tokens: int = 80) -> list[dict]:
    """One row per projector placement: visual tokens and GFLOP of the vision tower, the visual path, the LLM."""
    rows = []
    backends.configure_ops("native")                 # the spec's op code runs on meta tensors
    try:
        for before in (False, True):
            config = load_config(architecture)
            config.project_before_pooling = before
            with torch.device("meta"):
                model = PPLLaVAForConditionalGeneration(config).to(torch.bfloat16)
            size = config.vision_config.image_size
            size = size[0] if isinstance(size, (list, tuple)) else size
            pixels = torch.empty(frames, 3, size, size, device="meta", dtype=torch.bfloat16)
            layout = dict(visual_frames=torch.tensor([frames]), visual_is_video=torch.tensor([True]),
                          visual_sample=torch.tensor([0]))
            prompt = torch.zeros(1, 20, dtype=torch.long, device="meta")
            with torch.no_grad():
                patches = model.vision_patches(pixels, [frames])
                vision = _count(lambda: model.vision_patches(pixels, [frames]))
                tokens = model.encode_visuals(None, prompt_input_ids=prompt, patches=patches, **layout)[0].shape[0]
                visual = _count(lambda: model.encode_visuals(None, prompt_input_ids=prompt, patches=patches, **layout))
                embeds = torch.empty(1, tokens + text_tokens, config.text_config.hidden_size, device="meta",
                                     dtype=torch.bfloat16)
                llm = _count(lambda: model.language_model(inputs_embeds=embeds))
            rows.append({"project_before_pooling": before, "visual_tokens": tokens, "vision_gflop": vision / 1e9,
                         "visual_path_gflop": visual / 1e9, "llm_prefill_gflop": llm / 1e9,
                         "total_gflop": (vision + visual + llm) / 1e9})
    finally:
        backends.configure_ops(None)
    return rows


def format_flops(architecture: str, frames: int, rows: list[dict]) -> str:
    lines = [f"{architecture}, one video of {frames} frames (GFLOP, counted on the meta device)",
             f"{'projector':<16}{'tokens':>8}{'vision':>12}{'visual path':>14}{'LLM prefill':>14}{'total':>12}"]
    for r in rows:
        where = "before pooling" if r["project_before_pooling"] else "after pooling"
        lines.append(f"{where:<16}{r['visual_tokens']:>8}{r['vision_gflop']:>12.1f}{r['visual_path_gflop']:>14.1f}"
                     f"{r['llm_prefill_gflop']:>14.1f}{r['total_gflop']:>12.1f}")
    after, before = rows
    lines.append(f"before / after: {before['total_gflop'] / after['total_gflop']:.3f}x of the total")
    return "\n".join(lines)
