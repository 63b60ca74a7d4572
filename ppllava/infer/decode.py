"""Greedy decoding of several rows of different lengths at once: each row's prefill alone, the decoding batched.

A padded batch makes every row's prefill as long as the longest: a text-only question beside a video's thousand
visual tokens would cost the video's length, and on a compute-bound device (a CPU) batching the prefill saves
nothing anyway. Here each row is prefilled on exactly its own tokens, as it would be alone; the rows' KV caches
are then left-padded to one length and merged, and every further token of every row comes from one batched
step of the LLM, the padding masked and each row at its own positions. The steps are where batching pays: one
pass over the weights serves every row.

Greedy: the argmax of each row's logits; no stop token before `min_new_tokens`; a row ends at its first stop token
(not part of its answer); the loop ends when every row has stopped or after `max_new_tokens`.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def _last_logits(lm) -> dict:
    """The keyword that makes the LLM compute logits of the last position only (a prefill's other positions
    would cost a vocabulary-wide matmul each), where its forward takes one."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}


def _merge(caches: list[DynamicCache], lengths: list[int]) -> DynamicCache:
    """One cache of the rows' caches, each left-padded with zeros to the longest (the padding is masked)."""
    longest = max(lengths)
    merged = []
    for layer in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, n in zip(caches, lengths):
            k, v = cache.layers[layer].keys, cache.layers[layer].values      # (1, heads, n, head_dim)
            keys.append(torch.nn.functional.pad(k, (0, 0, longest - n, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, longest - n, 0)))
        merged.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(merged)


@torch.no_grad()
def greedy_rows(lm, rows: list[torch.Tensor], max_new_tokens: int, stop_ids: list[int],
                min_new_tokens: int = 0) -> list[list[int]]:
    """rows: each row's input embeddings (L_i, D) for the causal LM `lm`. Returns each row's new token ids, up to
    (without) its first stop token."""
    if not rows or max_new_tokens < 1:
        return [[] for _ in rows]
    device = rows[0].device
    keep = _last_logits(lm)
    caches, logits = [], []
    for embeds in rows:                                                   # each prefill alone, no padding
        ones = torch.ones((1, embeds.shape[0]), dtype=torch.long, device=device)
        out = lm(inputs_embeds=embeds[None], attention_mask=ones, use_cache=True, **keep)
        caches.append(out.cache)
        logits.append(out.logits[0, -1])
    lengths = [r.shape[0] for r in rows]
    longest = max(lengths)
    cache = _merge(caches, lengths) if len(rows) > 1 else caches[0]
    mask = torch.zeros((len(rows), longest), dtype=torch.long, device=device)
    for i, n in enumerate(lengths):
        mask[i, longest - n:] = 1
    positions = torch.tensor(lengths, device=device)                     # each row's next position
    logits = torch.stack(logits).float()
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    embed = lm.get_input_embeddings()
    answers: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for step in range(max_new_tokens):
        if step < min_new_tokens and len(stops):
            logits[:, stops] = float("-inf")
        chosen = logits.argmax(-1)
        for i, token in enumerate(chosen.tolist()):
            if not done[i]:
                done[i] = token in stop_ids
                if not done[i]:
                    answers[i].append(token)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], 1)
        out = lm(inputs_embeds=embed(chosen[:, None]), attention_mask=mask, position_ids=positions[:, None],
                 cache=cache, use_cache=True)
        cache, logits, positions = out.cache, out.logits[:, -1].float(), positions + 1
    return answers
