"""Test helpers for inference: a tiny checkpoint that says something, and a greedy decoder written out by hand.

The plain tiny checkpoint (random weights, tied embeddings) answers every prompt with one repeated "\\n", which
strips to "": nearly any bug in decoding, stopping or cutting an answer leaves that "" unchanged. The
talkative checkpoint is the same model with an untied random LM head over the tokenizer's ASCII word
tokens only (every other token keeps logit 0, so it never stops on its own), so its greedy answers are
varied text and a wrong, missing or extra token shows. (They follow the last tokens of the prompt more than
the video: two videos may get the same answer.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ppllava.model.checkpoint import load_model, load_tokenizers, save_weights
from ppllava.model.tiny import save_tiny_checkpoint


def save_talkative_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    path = save_tiny_checkpoint(directory, seed=seed)
    model = load_model(path)
    tokenizer, _ = load_tokenizers(path)
    config = model.config
    config.text_config.tie_word_embeddings = False
    state = {k: v.clone() for k, v in model.state_dict().items()}
    head = state["language_model.lm_head.weight"]
    words = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids and     # whole ASCII words and
             tokenizer.decode([i]).isascii() and tokenizer.decode([i]).strip().isalpha()]  # word pieces only
    generator = torch.Generator().manual_seed(seed + 100)
    new = torch.zeros_like(head)                          # every other token (specials, unused ids): logit 0
    new[words] = torch.randn(len(words), head.shape[1], generator=generator)
    state["language_model.lm_head.weight"] = new
    save_weights(config, state, path, torch.float32)
    return path


STOPS = ("<|im_end|>", "<|endoftext|>")                   # the tiny LLM's end of turn and EOS, by name


@torch.no_grad()
def greedy_by_hand(pipe, visual, question: str, max_new_tokens: int) -> list[int]:
    """The answer's token ids from a plain loop over the model's full forward (no cache, no generate()):
    append the argmax of the last position until a stop token (not kept) or max_new_tokens."""
    stops = set(pipe.tokenizer.convert_tokens_to_ids(list(STOPS)))
    parts = ([{"type": "video" if visual.is_video else "image"}] if visual is not None else [])
    inputs = pipe.inputs(visual, [{"role": "user", "content": parts + [{"type": "text", "text": question}]}])
    ids, out = inputs["input_ids"], []
    for _ in range(max_new_tokens):
        logits = pipe.model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
        token = int(logits[0, -1].argmax())
        if token in stops:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return out
