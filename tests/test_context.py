"""CLIP / SigLIP text context extension: positions, exact features for short prompts, tokenization."""

import logging

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, SiglipTextConfig, SiglipTextModel

from oracles import long_clip_positions
from ppllava.model import FAMILIES, encode_prompts, extend_positions, extended_length
from tiny_checkpoints import make_tokenizer

LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def test_extended_lengths_of_the_paper():
    assert extended_length(77) == 248
    assert extended_length(64) == 196
    with pytest.raises(ValueError, match="keep"):
        extended_length(20, keep=20)


@pytest.mark.parametrize("length", [77, 64])
def test_positions_match_long_clip_reference(length):
    table = torch.randn(length, 24, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    ours = extend_positions(table)
    assert ours.shape == (extended_length(length), 24)
    torch.testing.assert_close(ours, long_clip_positions(table), rtol=0, atol=1e-12)


def test_positions_below_keep_unchanged_and_the_rest_on_segments():
    old = torch.randn(77, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    new = extend_positions(old)
    assert torch.equal(new[:20], old[:20])
    last_interpolated = 20 + 4 * (77 - 1 - 20)          # new index of the last pretrained position
    for i in range(20, last_interpolated + 1):
        a, b = old[20 + (i - 20) // 4], old[min(20 + (i - 20) // 4 + 1, 76)]
        # projection onto the segment a -> b: on it (no residual) and between its ends
        if torch.equal(a, b):
            assert torch.allclose(new[i], a)
            continue
        t = torch.dot(new[i] - a, b - a) / torch.dot(b - a, b - a)
        assert -1e-12 <= float(t) < 1 and torch.allclose(new[i], a + t * (b - a), atol=1e-12)
    # every 4th new position is exactly a pretrained one
    assert torch.allclose(new[20:last_interpolated + 1:4], old[20:], atol=1e-12)
    # the three past the end continue the line through the last two pretrained positions
    step = old[76] - old[75]
    for j in (1, 2, 3):
        assert torch.allclose(new[last_interpolated + j], old[76] + j * step / 4, atol=1e-12)


def _extended_copy(family, tower):
    config = tower.config.to_dict()
    config["max_position_embeddings"] = extended_length(tower.config.max_position_embeddings)
    extended = family.text_class(type(tower.config)(**config)).eval()
    state = tower.state_dict()
    key = family.position_embedding_path + ".weight"
    state[key] = extend_positions(state[key])
    extended.load_state_dict(state)
    return extended


def test_clip_extended_tower_gives_original_features_for_short_prompts():
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=100, max_position_embeddings=77, projection_dim=16, eos_token_id=1, **LAYERS)
    family = FAMILIES["clip"]
    tower = family.text_class(config).eval()
    extended = _extended_copy(family, tower)
    ids = torch.randint(2, 100, (2, 40))
    ids[0, 19], ids[0, 20:] = 1, 1            # 20 tokens (EOS last), padded with EOS to the batch's 40
    ids[1, 39] = 1                            # 40 tokens
    mask = (torch.arange(40) < torch.tensor([[20], [40]])).long()
    with torch.no_grad():
        before = family.text_embeds(tower, ids, mask)
        after = family.text_embeds(extended, ids, mask)
    assert torch.equal(after[0], before[0])
    assert not torch.allclose(after[1], before[1])    # the long prompt does use the new positions


def test_siglip_extended_tower_gives_original_features_for_short_prompts():
    torch.manual_seed(0)
    config = SiglipTextConfig(vocab_size=100, max_position_embeddings=64, projection_size=32, **LAYERS)
    family = FAMILIES["siglip"]
    tower = SiglipTextModel(config).eval()
    extended = _extended_copy(family, tower)
    assert extended.config.max_position_embeddings == 196
    ids = torch.randint(2, 100, (3, 20))
    with torch.no_grad():
        assert torch.equal(family.text_embeds(extended, ids, None), family.text_embeds(tower, ids, None))
        long_ids = torch.randint(2, 100, (1, 30))
        assert not torch.allclose(family.text_embeds(extended, long_ids, None), family.text_embeds(tower, long_ids, None))


def test_long_prompts_are_truncated_with_one_warning(caplog):
    tokenizer = make_tokenizer(300, ["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>")
    short, long = "the cat sits", " ".join(["the red mat"] * 200)
    with caplog.at_level(logging.WARNING, logger="ppllava.model.context"):
        batch = encode_prompts(tokenizer, [short, long, long], max_length=248)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 prompt(s)" in warnings[0].getMessage()
    assert batch["input_ids"].shape == (3, 248)
    assert int(batch["attention_mask"][0].sum()) == len(tokenizer(short)["input_ids"])
    caplog.clear()
    padded = encode_prompts(tokenizer, [short], max_length=196, pad_to_max=True)
    assert padded["input_ids"].shape == (1, 196) and not caplog.records


def test_frozen_positions_keep_their_values_through_training_steps():
    """prompt_frozen_positions: the rows below it get no gradient and the trainer's AdamW leaves them bit for
    bit; the rows above train; the features equal those of the same tower without the freeze."""
    from ppllava.model.factory import build_model, load_config
    from ppllava.train.optim import build_optimizer

    config = load_config("tiny")
    config.prompt_frozen_positions = 20
    frozen = build_model(config, seed=0)
    config.prompt_frozen_positions = 0
    plain = build_model(config, seed=0)
    path = "prompt_pooling.prompt_tower." + frozen.prompt_pooling.family.position_embedding_path + ".weight"
    assert path in dict(frozen.named_parameters())              # the same name in the state dict
    eos = config.prompt_config.eos_token_id                     # CLIP pools at the end-of-text token
    ids = torch.cat([torch.arange(2, 41), torch.tensor([eos])])[None]   # 40 tokens: positions 0..39
    torch.testing.assert_close(frozen.prompt_pooling.encode_prompt(ids), plain.prompt_pooling.encode_prompt(ids),
                               rtol=0, atol=0)
    table = dict(frozen.named_parameters())[path]
    before = table.detach().clone()
    frozen.apply_trainable()
    optimizer = build_optimizer(frozen, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.999), group_lr={})
    for _ in range(2):
        optimizer.zero_grad()
        frozen.prompt_pooling.encode_prompt(ids).square().sum().backward()
        assert table.grad[:20].abs().sum() == 0 and table.grad[20:40].abs().sum(dim=1).gt(0).all()
        optimizer.step()
    assert torch.equal(table.detach()[:20], before[:20])
    assert not torch.equal(table.detach()[20:40], before[20:40])


def test_frozen_rows_in_a_siglip_tower():
    from ppllava.model.context import freeze_rows

    config = SiglipTextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, max_position_embeddings=64)
    tower = SiglipTextModel(config)
    before = tower(input_ids=torch.arange(2, 66)[None]).pooler_output
    freeze_rows(tower, FAMILIES["siglip"].position_embedding_path, 20)
    out = tower(input_ids=torch.arange(2, 66)[None]).pooler_output
    torch.testing.assert_close(out, before, rtol=0, atol=0)
    out.square().sum().backward()
    grad = tower.embeddings.position_embedding.weight.grad
    assert grad[:20].abs().sum() == 0 and grad[20:].abs().sum(dim=1).gt(0).all()
