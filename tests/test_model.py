"""The PPLLaVA model built from configs/model/tiny.yaml: token counts, wiring, round trips, errors."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from ppllava.model.synthetic import make_batch, visual_kwargs
from ppllava.model import PPLLaVAForConditionalGeneration, build_model, load_config


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0).eval()


def _oracle_tokens(model, pixel_values, kernel, project_before):
    """avg_pool3d of the chosen vision layer (CLS dropped), projected before or after: the uniform-weight case."""
    c = model.config
    hidden = model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[c.vision_feature_layer][:, 1:]
    g = c.patch_grid
    x = hidden.reshape(-1, g, g, hidden.shape[-1])
    if project_before:
        x = model.multi_modal_projector(x)
    pooled = F.avg_pool3d(x.permute(3, 0, 1, 2).unsqueeze(0), kernel).squeeze(0).permute(1, 2, 3, 0)
    pooled = pooled.reshape(-1, pooled.shape[-1])
    return pooled if project_before else model.multi_modal_projector(pooled)


def test_paper_token_counts(model):
    config = model.config
    assert config.patch_grid == 24
    assert config.visual_tokens(32, True) == 1024           # 32 x 24 x 24 -> 16 x 8 x 8
    assert config.visual_tokens(1, False) == 64             # one crop -> 8 x 8
    assert config.visual_tokens(5, False) == 5 * 64         # crops pool one by one (kernel t = 1)
    batch = make_batch(config, [(32, True, 0), (1, False, 1), (3, False, 1)])
    with torch.no_grad():
        tokens = model.encode_visuals(**{k: v for k, v in visual_kwargs(batch).items()})
    assert [t.shape for t in tokens] == [(1024, 64), (64, 64), (192, 64)]


@pytest.mark.parametrize("project_before", [False, True])
def test_uniform_relevance_is_avg_pool_of_the_feature_layer(project_before):
    config = load_config("tiny")
    config.pooling_temperature = 1e6          # softmax(S / temperature) is uniform within every window
    config.project_before_pooling = project_before
    _assert_avg_pool_of_the_feature_layer(config, project_before)


def _assert_avg_pool_of_the_feature_layer(config, project_before):
    """A 4-frame video and a 2-frame image pool to avg_pool3d of their features."""
    model = build_model(config, seed=1).eval()
    batch = make_batch(config, [(4, True, 0), (2, False, 0)], seed=3)
    with torch.no_grad():
        video, image = model.encode_visuals(**visual_kwargs(batch))
        px = batch["pixel_values"]
        torch.testing.assert_close(video, _oracle_tokens(model, px[:4], (2, 3, 3), project_before), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(image, _oracle_tokens(model, px[4:], (1, 3, 3), project_before), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ops", ["native", "cpu", "npu"])
def test_the_average_baseline_is_avg_pool3d_in_every_implementation(ops, monkeypatch):
    monkeypatch.setenv("PPLLAVA_OPS", ops)      # the baseline runs the pooling op (the 910B has no avg_pool3d)
    config = load_config("tiny")
    config.pooling_mode = "average"
    _assert_avg_pool_of_the_feature_layer(config, project_before=False)


def test_items_of_a_mixed_batch_equal_the_items_alone(model):
    items = [(4, True, 0), (1, False, 0), (2, False, 1), (4, True, 1), (1, False, 2)]
    batch = make_batch(model.config, items, seed=5)
    with torch.no_grad():
        together = model.encode_visuals(**visual_kwargs(batch))
        start = 0
        for i, (frames, is_video, row) in enumerate(items):
            alone = model.encode_visuals(batch["pixel_values"][start:start + frames], torch.tensor([frames]),
                                         torch.tensor([is_video]), torch.tensor([0]), batch["prompt_input_ids"][row:row + 1])
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
            start += frames


def test_the_prompt_steers_the_pooling(model):
    batch = make_batch(model.config, [(4, True, 0)], seed=7)
    other = dict(visual_kwargs(batch), prompt_input_ids=make_batch(model.config, [(4, True, 0)], seed=8)["prompt_input_ids"])
    with torch.no_grad():
        a, = model.encode_visuals(**visual_kwargs(batch))
        b, = model.encode_visuals(**other)
    assert not torch.allclose(a, b)


def test_placeholders_receive_the_visual_tokens_in_order(model):
    batch = make_batch(model.config, [(2, True, 0), (1, False, 0), (1, False, 1)], seed=2)
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], **visual_kwargs(batch))
        tokens = model.encode_visuals(**visual_kwargs(batch))
    mask = model.placeholder_mask(batch["input_ids"])
    assert torch.equal(embeds[mask], torch.cat(tokens))
    text = model.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(embeds[~mask], text[~mask])


def test_save_and_from_pretrained_round_trip_identical_logits(model, tmp_path):
    batch = make_batch(model.config, [(4, True, 0), (2, False, 1)], seed=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loader in (PPLLaVAForConditionalGeneration, AutoModelForImageTextToText):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, PPLLaVAForConditionalGeneration)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_generate_continues_with_the_forward_argmax(model):
    batch = make_batch(model.config, [(2, True, 0), (1, False, 1)], seed=6)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
        logits = model(**batch).logits
    prompt_len = batch["input_ids"].shape[1]
    assert out.shape == (2, prompt_len + 3)
    assert torch.equal(out[:, :prompt_len], batch["input_ids"])
    assert torch.equal(out[:, prompt_len], logits[:, -1].argmax(-1))


def test_loss_ignores_placeholder_positions_and_trains_the_prompt_tower(model):
    batch = make_batch(model.config, [(2, True, 0), (1, False, 1)], seed=9)
    model.apply_trainable()
    out = model(**batch, labels=batch["input_ids"])
    labels = batch["input_ids"].masked_fill(model.placeholder_mask(batch["input_ids"]), -100)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    model.zero_grad()
    out.loss.backward()
    groups = model.parameter_groups()
    # gradients reach the CLIP text tower through the relevance map and the pooling weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in groups["prompt_tower"])
    assert all(p.grad is None for _, p in groups["vision_tower"])
    model.zero_grad()


def test_parameter_groups_partition_and_switches():
    config = load_config("tiny")
    config.train_llm, config.train_vision_tower = False, True
    model = build_model(config, seed=0)
    groups = model.parameter_groups()
    names = [n for params in groups.values() for n, _ in params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(names) == len(set(names))
    assert any(n.startswith("prompt_pooling.patch_projection.") for n, _ in groups["vision_tower"])
    trains = model.apply_trainable()
    assert trains == {"vision_tower": True, "prompt_tower": True, "projector": True, "llm": False}
    for group, params in groups.items():
        assert all(p.requires_grad == trains[group] for _, p in params)
