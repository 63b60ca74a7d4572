"""infer/decode.py: rows of different lengths, each prefilled alone and decoded together, give the tokens that
transformers' own generate() gives each row alone (greedy, stop tokens, min_new_tokens)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ppllava.infer.decode import greedy_rows

SHAPE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def _lm(kind: str):
    torch.manual_seed(0)
    model = (Qwen2ForCausalLM(Qwen2Config(**SHAPE)) if kind == "qwen2" else
             LlamaForCausalLM(LlamaConfig(**SHAPE, attention_bias=True)))
    for p in model.parameters():                  # large weights: confident, varied greedy choices
        p.data.normal_(0, 0.3)
    return model.eval()


def _alone(lm, embeds, max_new, stops, min_new=0):
    out = lm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                      max_new_tokens=max_new, min_new_tokens=min_new, do_sample=False, eos_token_id=stops,
                      pad_token_id=stops[0])[0].tolist()
    return out[:next((i for i, t in enumerate(out) if t in stops), len(out))]


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_rows_of_different_lengths_decode_as_each_alone(kind):
    lm = _lm(kind)
    gen = torch.Generator().manual_seed(1)
    rows = [lm.get_input_embeddings()(torch.randint(0, 97, (n,), generator=gen)) for n in (3, 41, 12, 1)]
    free = [_alone(lm, r, 10, [96]) for r in rows]
    # stop on a token some rows pick greedily, so that rows end at different steps
    stop = free[1][2]
    stops = [96, stop]
    want = [_alone(lm, r, 10, stops) for r in rows]
    assert len({len(w) for w in want}) > 1, want
    with torch.no_grad():
        assert greedy_rows(lm, rows, 10, stops) == want
        held = [_alone(lm, r, 10, stops, min_new=10) for r in rows]
        assert greedy_rows(lm, rows, 10, stops, min_new_tokens=10) == held
        assert all(len(h) == 10 for h in held)
        assert greedy_rows(lm, rows[1:2], 10, stops) == want[1:2]          # one row


def test_each_prefill_reads_its_own_tokens_and_every_step_all_rows():
    lm = _lm("qwen2")
    seen = []
    lm.register_forward_pre_hook(lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])),
                                 with_kwargs=True)
    gen = torch.Generator().manual_seed(2)
    rows = [lm.get_input_embeddings()(torch.randint(0, 97, (n,), generator=gen)) for n in (5, 40, 12)]
    with torch.no_grad():
        out = greedy_rows(lm, rows, 4, [], min_new_tokens=0)
    assert [len(o) for o in out] == [4, 4, 4]
    # three prefills of their own lengths (no padding to 40), then 3 batched steps of one token per row
    assert seen == [(1, 5), (1, 40), (1, 12), (3, 1), (3, 1), (3, 1)]


def test_steps_write_the_cache_in_place():
    """Every decoding step attends over views of one buffer per layer, sized for the prefill and every step's
    position: the cache is never copied to grow (transformers' DynamicLayer concatenates at every step)."""
    lm = _lm("llama")
    storages, lengths = [], []

    def look(module, args, kwargs):
        if kwargs.get("cache") is not None:
            layer = kwargs["cache"].layers[0]
            storages.append(layer.keys.untyped_storage().data_ptr())
            lengths.append(layer.keys.shape[2])
    lm.register_forward_pre_hook(look, with_kwargs=True)
    gen = torch.Generator().manual_seed(3)
    rows = [lm.get_input_embeddings()(torch.randint(0, 97, (n,), generator=gen)) for n in (7, 19)]
    with torch.no_grad():
        out = greedy_rows(lm, rows, 6, [], min_new_tokens=6)
    assert [len(o) for o in out] == [6, 6]
    assert lengths == [19, 20, 21, 22, 23]                    # 5 steps after the prefills, one position each
    assert len(set(storages)) == 1


def test_a_sliding_window_cache_is_refused_not_misread():
    """A sliding-window layer's cache keeps only its window: merging it as if it held every position would put
    keys at the wrong positions, so batched decoding says so instead."""
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8, max_window_layers=0)).eval()
    gen = torch.Generator().manual_seed(4)
    rows = [lm.get_input_embeddings()(torch.randint(0, 97, (n,), generator=gen)) for n in (20, 5)]
    with torch.no_grad(), pytest.raises(ValueError, match="sliding-window"):
        greedy_rows(lm, rows, 3, [])
