"""Greedy decoding of several rows of different lengths at once: each row's prefill alone, the decoding batched.

A padded batch makes every row's prefill as long as the longest: a text-only question beside a video's thousand
visual tokens would cost the video's length, and on a compute-bound device (a CPU) batching the prefill saves
nothing anyway. Here each row is prefilled on exactly its own tokens, as it would be alone; the rows' KV caches
are then left-padded to one length and merged, and every further token of every row comes from one batched
step of the LLM, the padding masked and each row at its own positions. The steps are where batching pays: one
pass over the weights serves every row. The merged cache has room for every step's position from the start, so
a step writes one position in place (transformers' DynamicLayer copies the whole cache to grow it by one).

Greedy: the argmax of each row's logits; no stop token before `min_new_tokens`; a row ends at its first stop token
(not part of its answer); the loop ends when every row has stopped or after `max_new_tokens`.
"""

from __future__ import annotations

import inspect

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer


def _last_logits(lm) -> dict:
    """The keyword that makes the LLM compute logits of the last position only (a prefill's other positions
    would cost a vocabulary-wide matmul each), where its forward takes one."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}


class _Reserved(DynamicLayer):
    """One layer's keys and values, (rows, heads, positions, head_dim), in buffers with room for more positions:
    an update writes its positions in place, and `keys` / `values` are views of the positions written."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, written: int):
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self._keys, self._values, self._written = keys, values, written
        self.keys, self.values = keys[:, :, :written], values[:, :, :written]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._written + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError(f"the decoding cache holds {self._keys.shape[-2]} positions, {end} asked")
        self._keys[:, :, self._written:end] = key_states
        self._values[:, :, self._written:end] = value_states
        self._written = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def _merge(caches: list[DynamicCache], lengths: list[int], room: int) -> Cache:
    """One cache of the rows' caches, each left-padded with zeros to the longest (the padding is masked), with
    `room` more positions for the decoding steps."""
    longest = max(lengths)
    merged = []
    for layer in range(len(caches[0].layers)):
        first = caches[0].layers[layer]
        shape = (len(caches), first.keys.shape[1], longest + room, first.keys.shape[3])
        keys, values = first.keys.new_zeros(shape), first.values.new_zeros(shape[:3] + first.values.shape[3:])
        for row, (cache, n) in enumerate(zip(caches, lengths)):
            if cache.layers[layer].keys.shape[2] != n:
                raise ValueError(f"layer {layer}'s cache holds {cache.layers[layer].keys.shape[2]} of a row's {n} "
                                 "positions (a sliding-window cache): batched decoding needs every position")
            keys[row, :, longest - n:longest] = cache.layers[layer].keys[0]
            values[row, :, longest - n:longest] = cache.layers[layer].values[0]
        merged.append(_Reserved(keys, values, longest))
    return Cache(layers=merged)


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
    cache = _merge(caches, lengths, max_new_tokens - 1)
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
