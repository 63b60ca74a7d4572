"""Stage 1 of the test bed recipe: align the tiny vision and prompt towers on frame/caption pairs.

PPLLaVA's pooling weights come from the CLIP relevance between the question and every patch, so the
towers must agree patch by patch, not only per frame. For each clip of a batch and each shape in it,
a phrase naming the shape ("the red one", "Is there a red shape?", ...) is encoded by the prompt
tower, and so is one naming a colour that the clip does not have:

    grounding  the relevance map the model computes for the phrase (softmax over all patches of the
               clip of relevance_scale * cos, exactly as PromptGuidedPooling does) is pulled towards
               the shape's pixel coverage of each patch (cross-entropy), and for the absent colour
               towards the uniform map: a question about nothing in the clip must not single out
               patches, so the pooling weights of its windows stay flat (an average) where the
               named shape is not, and peak on it where it is;
    contrast   each shape's region embedding (its patches' embeddings averaged by coverage) against
               every phrase of the batch, and back: CLIP's symmetric loss, phrases of the same colour
               and shape counting as positives.

The vision tower, its patch projection and the prompt tower train; the projector and the LLM do not
take part. Runs on one process, on the CPU in about a minute for the test bed's model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backends.device import reproducible_numerics

from ppllava.data.preprocess import Preprocessor
from ppllava.model.context import encode_prompts

from . import synthetic

log = logging.getLogger(__name__)


@dataclass
class AlignConfig:
    steps: int = 300
    clips_per_step: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 20
    seed: int = 0
    log_every: int = 50


def coverage(scene: dict, grid: int) -> torch.Tensor:
    """float (shapes, T, grid, grid): the share of each patch's pixels that each shape covers."""
    m = torch.from_numpy(synthetic.masks(scene)).float()
    return F.avg_pool2d(m, scene["size"] // grid)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    groups = model.parameter_groups()
    return [p for g in ("vision_tower", "prompt_tower") for _, p in groups[g]]


class Aligner:
    """The two losses of one batch of clips for `model` (a PPLLaVAForConditionalGeneration)."""

    def __init__(self, model, prompt_tokenizer):
        self.model, self.prompt_tokenizer = model, prompt_tokenizer
        self.preprocess = Preprocessor.for_config(model.config)
        self.grid = model.config.patch_grid
        self.scale = model.config.relevance_scale

    def batch(self, scenes: list[dict], rng: np.random.Generator) -> dict:
        frames = torch.from_numpy(np.concatenate([synthetic.render(s) for s in scenes]))
        phrases, owners, identities, targets = [], [], [], []
        for c, scene in enumerate(scenes):
            for shape, cover in zip(scene["shapes"], coverage(scene, self.grid)):
                phrases.append(synthetic.phrase(shape, rng))
                owners.append(c)
                identities.append((shape["colour"], shape["shape"]))
                targets.append(cover.flatten() / cover.sum())
        shown = len(phrases)
        for c, scene in enumerate(scenes):
            absent = synthetic.absent_colours(scene)
            phrases.append(synthetic.phrase({"colour": absent[int(rng.integers(len(absent)))], "shape": "shape"}, rng))
            owners.append(c)
            targets.append(torch.full_like(targets[0], 1 / targets[0].numel()))
        prompts = encode_prompts(self.prompt_tokenizer, phrases, self.model.prompt_pooling.prompt_max_length)
        same = torch.tensor([[a == b for b in identities] for a in identities])
        return {"pixel_values": self.preprocess(frames), "clips": len(scenes), "owners": torch.tensor(owners),
                "targets": torch.stack(targets), "shown": shown, "same": same, **prompts}

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        model = self.model
        patches = model.vision_patches(batch["pixel_values"])                       # (C*T, g, g, Dv)
        embeds = F.normalize(model.prompt_pooling.embed_patches(patches), dim=-1)
        embeds = embeds.reshape(batch["clips"], -1, embeds.shape[-1])                 # (C, T*g*g, E)
        text = F.normalize(model.prompt_pooling.encode_prompt(batch["input_ids"], batch["attention_mask"]), dim=-1)
        clip_of = embeds[batch["owners"]]                                             # (K, T*g*g, E)
        logits = self.scale * torch.einsum("kne,ke->kn", clip_of, text)
        grounding = -(batch["targets"] * logits.log_softmax(-1)).sum(-1).mean()
        shown = batch["shown"]                                                        # rows of present shapes
        regions = F.normalize(torch.einsum("kn,kne->ke", batch["targets"][:shown], clip_of[:shown]), dim=-1)
        pair = self.scale * regions @ text[:shown].T
        positives = batch["same"].float() / batch["same"].sum(-1, keepdim=True)
        contrast = 0.5 * (-(positives * pair.log_softmax(-1)).sum(-1).mean()
                          - (positives * pair.T.log_softmax(-1)).sum(-1).mean())
        return {"grounding": grounding, "contrast": contrast}


def align(model, prompt_tokenizer, scenes: list[dict], config: AlignConfig = AlignConfig()) -> list[dict]:
    """Train the towers of `model` in place on `scenes`; returns the per-step losses."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    deterministic = reproducible_numerics()      # else two CPU threads add some gradients in a varying order
    try:
        return _train(model, prompt_tokenizer, scenes, config, rng)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(model, prompt_tokenizer, scenes, config, rng) -> list[dict]:
    aligner = Aligner(model, prompt_tokenizer)
    params = trainable_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup)
                                                 * 0.5 * (1 + np.cos(np.pi * s / config.steps)))
    model.train()
    history, start = [], time.perf_counter()
    for step in range(config.steps):
        picked = rng.choice(len(scenes), size=config.clips_per_step, replace=False)
        losses = aligner.losses(aligner.batch([scenes[i] for i in picked], rng))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        history.append({k: v.item() for k, v in losses.items()})
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            log.info("align step %d/%d: %s (%.0f s)", step + 1, config.steps,
                     ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()), time.perf_counter() - start)
    model.eval()
    return history
