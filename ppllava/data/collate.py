"""Items -> one model batch, the keyword arguments of PPLLaVAForConditionalGeneration.

    input_ids, attention_mask, labels   (B, L)  padded on `padding_side` (right for training)
    pixel_values                        (F, 3, S, S) every frame of every medium, in item order
    visual_frames, visual_is_video,     (N,) per medium; visual_sample is its batch row
    visual_sample
    visual_image_size                   (N, 2) the (height, width) of anyres images (processing.MediaInputs), 0 for
                                        the other media (as Pipeline.generate_batch gives it)
    prompt_input_ids, prompt_attention_mask   (B, P) the pooling prompts, for the prompt tower
    skipped                             [Skipped, ...] the samples dropped from this batch (not a model input)

Skipped samples are left out of the rows and listed under "skipped"; a batch of skips only has no
"input_ids" (the loader's SkipMonitor counts it and moves on). Media-free rows are fine; a batch with
no media at all has no visual keys.
"""

from __future__ import annotations

import torch

from ..model.context import encode_prompts
from .chat import IGNORE
from .dataset import Item, Skipped


class Collator:
    def __init__(self, pad_token_id: int, prompt_tokenizer, prompt_max_length: int, pad_prompts_to_max: bool,
                 padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.prompt_tokenizer = pad_token_id, prompt_tokenizer
        self.prompt_max_length, self.pad_prompts_to_max = prompt_max_length, pad_prompts_to_max
        self.padding_side = padding_side

    @classmethod
    def for_model(cls, config, tokenizer, prompt_tokenizer, padding_side: str = "right") -> "Collator":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.text_config.pad_token_id
        if pad is None:
            raise ValueError("neither the tokenizer nor the LLM config defines a pad token")
        return cls(pad, prompt_tokenizer, config.prompt_config.max_position_embeddings,
                   config.tower_family().pad_prompts_to_max, padding_side)

    def _pad(self, rows: list[torch.Tensor], value: int) -> torch.Tensor:
        length = max(len(r) for r in rows)
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, r in enumerate(rows):
            if self.padding_side == "right":
                out[i, :len(r)] = r
            else:
                out[i, length - len(r):] = r
        return out

    def __call__(self, batch: list[Item | Skipped]) -> dict:
        items = [b for b in batch if isinstance(b, Item)]
        out: dict = {"skipped": [b for b in batch if isinstance(b, Skipped)]}
        if not items:
            return out
        out["input_ids"] = self._pad([i.input_ids for i in items], self.pad_token_id)
        out["labels"] = self._pad([i.labels for i in items], IGNORE)
        out["attention_mask"] = self._pad([torch.ones_like(i.input_ids) for i in items], 0)
        media = [(row, t, v, size) for row, i in enumerate(items)
                 for t, v, size in zip(i.frames, i.is_video, i.image_sizes or [None] * len(i.frames))]
        if media:
            out["pixel_values"] = torch.cat([i.pixel_values for i in items if i.pixel_values is not None])
            out["visual_frames"] = torch.tensor([t for _, t, _, _ in media], dtype=torch.long)
            out["visual_is_video"] = torch.tensor([v for _, _, v, _ in media], dtype=torch.bool)
            out["visual_sample"] = torch.tensor([row for row, _, _, _ in media], dtype=torch.long)
            out["visual_image_size"] = torch.tensor([size or (0, 0) for *_, size in media], dtype=torch.long)
            prompts = encode_prompts(self.prompt_tokenizer, [i.prompt for i in items], self.prompt_max_length,
                                     self.pad_prompts_to_max)
            out["prompt_input_ids"], out["prompt_attention_mask"] = prompts["input_ids"], prompts["attention_mask"]
        return out
