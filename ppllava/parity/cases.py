"""Parity cases: fixed-seed inputs made on the CPU (identical on every machine), run on any device.

A case makes float32 CPU inputs from a torch.Generator, names which of them are differentiable,
and runs the op(s) under test. The harness casts inputs to the dtype under test, moves them to the
device, runs forward, then backward with a fixed random cotangent, and keeps the output and the grads.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

import backends


@dataclass(frozen=True)
class Case:
    name: str
    make_inputs: Callable[[torch.Generator], dict[str, torch.Tensor]]
    run: Callable[..., torch.Tensor]
    differentiable: tuple[str, ...]
    rule: str = "op"              # "model" for whole-network outputs (see compare.py)

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


def _relevance_like(gen, B, T, H, W):
    """A relevance map with CLIP-like peaks: softmax of scaled random logits over each sample."""
    logits = 8 * _randn(gen, B, T * H * W)
    return logits.softmax(-1).view(B, T, H, W)


def _video_and_text(gen, B, T, H, W, C):
    return {"video_embeds": _randn(gen, B, T, H, W, C), "text_embeds": _randn(gen, B, C)}


def _masked(gen):
    inputs = _video_and_text(gen, 2, 6, 4, 4, 32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # sample 1 has two padded frames
    return {**inputs, "mask": mask}


def _pool_inputs(B, T, H, W, D):
    return lambda gen: {"x": _randn(gen, B, T, H, W, D), "relevance": _relevance_like(gen, B, T, H, W)}


def _chain_inputs(gen):
    return {**_video_and_text(gen, 2, 8, 6, 6, 32), "x": _randn(gen, 2, 8, 6, 6, 48)}


def _chain(video_embeds, text_embeds, x):
    S = backends.relevance_map(video_embeds, text_embeds, 100.0)
    return backends.prompt_guided_pool(x, S, kernel=(2, 3, 3))


MODEL_ITEMS = [(4, True, 0), (2, False, 1), (1, False, 1)]   # a video; a 2-crop image and an image
MODEL_SEED = 1234


def _model_inputs(gen):
    from ppllava.model import load_config
    from ppllava.model.synthetic import make_batch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return make_batch(load_config("tiny"), MODEL_ITEMS, seed=seed)


def _model_logits(pixel_values, **batch):
    """Logits of the tiny model (fixed-seed weights, built on the CPU, then moved) on a fixed batch."""
    from ppllava.model import build_model

    model = build_model("tiny", seed=MODEL_SEED).eval().to(device=pixel_values.device, dtype=pixel_values.dtype)
    return model(pixel_values=pixel_values, **batch).logits


CASES: list[Case] = [
    Case("relevance_map", lambda g: _video_and_text(g, 2, 8, 6, 6, 64),
         lambda video_embeds, text_embeds: backends.relevance_map(video_embeds, text_embeds, 100.0),
         ("video_embeds", "text_embeds")),
    Case("relevance_map/masked", _masked,
         lambda video_embeds, text_embeds, mask: backends.relevance_map(video_embeds, text_embeds, 100.0, mask),
         ("video_embeds", "text_embeds")),
    Case("prompt_guided_pool/video(2,3,3)", _pool_inputs(2, 8, 6, 6, 32),
         lambda x, relevance: backends.prompt_guided_pool(x, relevance, kernel=(2, 3, 3)),
         ("x", "relevance")),
    Case("prompt_guided_pool/image(1,3,3)+leftovers", _pool_inputs(2, 1, 7, 8, 32),
         lambda x, relevance: backends.prompt_guided_pool(x, relevance, kernel=(1, 3, 3)),
         ("x", "relevance")),
    Case("prompt_guided_pool/overlap(2,3,3)/(1,2,2)", _pool_inputs(1, 5, 7, 7, 16),
         lambda x, relevance: backends.prompt_guided_pool(x, relevance, kernel=(2, 3, 3), stride=(1, 2, 2)),
         ("x", "relevance")),
    Case("relevance_map->prompt_guided_pool", _chain_inputs, _chain, ("video_embeds", "text_embeds", "x")),
    Case("model/tiny:logits", _model_inputs, _model_logits, ("pixel_values",), rule="model"),
]


def run_case(case: Case, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Run one case on `device` in `dtype`; returns float32 CPU tensors: 'out' and 'grad/<input>'."""
    gen = torch.Generator().manual_seed(case.seed)
    inputs = case.make_inputs(gen)
    cotangent_gen = torch.Generator().manual_seed(case.seed + 1)
    on_device = {}
    for name, value in inputs.items():
        value = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        on_device[name] = value.requires_grad_(name in case.differentiable)
    out = case.run(**on_device)
    cotangent = torch.randn(out.shape, generator=cotangent_gen).to(device=device, dtype=out.dtype)
    out.backward(cotangent)
    results = {"out": out}
    results.update({f"grad/{name}": on_device[name].grad for name in case.differentiable})
    return {name: t.detach().float().cpu() for name, t in results.items()}
