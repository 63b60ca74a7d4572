"""CLIP text context extension (asymmetric position interpolation) and prompt tokenization.

A text tower trained with L positions keeps positions i < keep unchanged; beyond them the table is
stretched `stretch` times: new position keep + j (j >= 0) reads the old table at keep + j / stretch,
linearly interpolated between its two pretrained neighbours. The last stretch - 1 new positions lie
past the last pretrained one and continue the line through the last two (as Long-CLIP does).
    new length = stretch * L - (stretch - 1) * keep      CLIP 77 -> 248, SigLIP 64 -> 196 (keep 20, stretch 4)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

KEEP = 20
STRETCH = 4


def extended_length(length: int, keep: int = KEEP, stretch: int = STRETCH) -> int:
    if not 0 < keep < length or stretch < 1:
        raise ValueError(f"context extension needs 0 < keep < length and stretch >= 1, got keep={keep}, "
                         f"length={length}, stretch={stretch}")
    return stretch * length - (stretch - 1) * keep


def extend_positions(table: torch.Tensor, keep: int = KEEP, stretch: int = STRETCH) -> torch.Tensor:
    """(L, D) position table -> (stretch * L - (stretch - 1) * keep, D); the first `keep` rows are copied,
    the rest interpolated in at least float32."""
    length = table.shape[0]
    new_length = extended_length(length, keep, stretch)
    old = table.detach().to(torch.promote_types(table.dtype, torch.float32))
    pos = keep + torch.arange(new_length - keep, dtype=torch.float64) / stretch   # where each new position reads
    lo = pos.floor().long().clamp(max=length - 2)                                   # past the end: extrapolate
    frac = (pos - lo).float().unsqueeze(1)
    tail = old[lo] + frac * (old[lo + 1] - old[lo])
    return torch.cat([table.detach()[:keep], tail.to(table.dtype)])


def truncate_warning(lengths: list[int], max_length: int) -> str | None:
    over = [n for n in lengths if n > max_length]
    if not over:
        return None
    return (f"{len(over)} of {len(lengths)} prompt(s) exceed the text tower's {max_length} positions "
            f"(longest {max(over)} tokens) and were truncated")


def encode_prompts(tokenizer, texts: list[str], max_length: int, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    """Tokenize prompts for the CLIP/SigLIP text tower; longer ones are truncated with one warning per call.

    pad_to_max pads every prompt to max_length (SigLIP reads its pooled feature at the last position,
    so it was trained on max-length padding); otherwise pad to the longest prompt (CLIP pools at EOS).
    """
    full = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    message = truncate_warning([len(ids) for ids in full], max_length)
    if message:
        log.warning(message)
    # SigLIP's (slow) tokenizer returns no attention mask unless asked: its tower does not read one
    return tokenizer(list(texts), padding="max_length" if pad_to_max else "longest", truncation=True,
                     max_length=max_length, return_attention_mask=True, return_tensors="pt")


class FrozenRowsEmbedding(nn.Embedding):
    """An embedding whose first `frozen` rows get no gradient: they keep their values through training (with a
    zero gradient AdamW leaves them exactly as they are). Reads its weight inside its own call (ZeRO-3)."""

    def __init__(self, weight: nn.Parameter, frozen: int):
        super().__init__(weight.shape[0], weight.shape[1], _weight=weight)     # holds it, draws no random numbers
        self.frozen = frozen

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.weight[: self.frozen].detach(), self.weight[self.frozen:]])
        return nn.functional.embedding(ids, weight)


def freeze_rows(tower: nn.Module, path: str, frozen: int) -> None:
    """Swap the nn.Embedding at `path` inside `tower` for a FrozenRowsEmbedding holding the same Parameter
    (its name in the state dict does not change)."""
    parent, _, name = path.rpartition(".")
    old = tower.get_submodule(path)
    new = FrozenRowsEmbedding(old.weight, frozen)
    if hasattr(old, "_is_hf_initialized"):       # the tower initialised it: the model's own init passes it by
        new._is_hf_initialized = old._is_hf_initialized
    setattr(tower.get_submodule(parent) if parent else tower, name, new)
