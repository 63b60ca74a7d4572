"""Stand-in work that keeps every process in the same collectives, whatever its micro-batch holds.

Under ZeRO-3 a process gathers each module's parameters as the module runs, so all processes must run
the same modules in the same order; under ZeRO-2 every trainable parameter must get a gradient. A
micro-batch without media would skip the vision tower, the prompt tower and the projector, and one
whose samples were all unreadable would skip everything. So:

- a media-free batch gets one more row: a blank image and its placeholders, every label ignored. The
  loss (a mean over the labelled tokens) is unchanged, and the visual path's gradients are zero;
- an empty batch is replaced by that row alone, with a zero loss that still reaches every parameter.
"""

from __future__ import annotations

import torch

from ..data.chat import IGNORE
from ..model.config import side
from ..model.context import encode_prompts


class StandIn:
    def __init__(self, config, collator):
        size = side(config.vision_config.image_size)
        ids = config.placeholders(1, is_video=False) + [collator.pad_token_id]
        prompt = encode_prompts(collator.prompt_tokenizer, ["."], collator.prompt_max_length, collator.pad_prompts_to_max)
        self.pad = collator.pad_token_id
        self.row = dict(input_ids=torch.tensor([ids]), labels=torch.full((1, len(ids)), IGNORE),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        self.visual = dict(pixel_values=torch.zeros(1, 3, size, size), visual_frames=torch.tensor([1]),
                           visual_is_video=torch.tensor([False]), prompt_input_ids=prompt["input_ids"],
                           prompt_attention_mask=prompt["attention_mask"])

    def complete(self, batch: dict) -> tuple[dict, bool]:
        """(model inputs, whether their loss counts) for a collated micro-batch."""
        batch = {k: v for k, v in batch.items() if k != "skipped"}
        if "input_ids" not in batch:
            return {**self.row, **self.visual, "visual_sample": torch.tensor([0])}, False
        if "pixel_values" in batch:
            return batch, True
        rows = len(batch["input_ids"])
        merged = {key: _stack(batch[key], self.row[key], fill)
                  for key, fill in (("input_ids", self.pad), ("labels", IGNORE), ("attention_mask", 0))}
        prompts = {k: self.visual[k].expand(rows + 1, -1) for k in ("prompt_input_ids", "prompt_attention_mask")}
        return {**batch, **merged, **self.visual, **prompts, "visual_sample": torch.tensor([rows])}, True


def _stack(rows: torch.Tensor, extra: torch.Tensor, fill: int) -> torch.Tensor:
    """rows (B, L) and extra (1, L') right-padded with `fill` to one (B + 1, max(L, L')) tensor."""
    length = max(rows.shape[1], extra.shape[1])
    out = torch.full((rows.shape[0] + 1, length), fill, dtype=rows.dtype)
    out[:-1, :rows.shape[1]] = rows
    out[-1, :extra.shape[1]] = extra[0]
    return out
