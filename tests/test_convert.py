"""`ppllava convert` from tiny saved LLaVA-OneVision + SigLIP and LLaVA-NeXT + CLIP pairs (no download)."""

import copy
import json

import pytest
import torch
from transformers import AutoTokenizer

from ppllava.model.synthetic import make_batch
from ppllava.cli import main
from ppllava.model import load_model
from ppllava.model.convert import convert
from oracles import long_clip_positions
from tiny_checkpoints import save_clip_pair, save_llava_next, save_llava_onevision, save_siglip_pair


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    models = {"ov": save_llava_onevision(root / "ov"), "siglip": save_siglip_pair(root / "siglip"),
              "next": save_llava_next(root / "next"), "clip": save_clip_pair(root / "clip")}
    return root, models


@pytest.fixture(scope="module")
def converted_ov(folders):
    root, models = folders
    assert main(["convert", "--base", str(root / "ov"), "--text-tower", str(root / "siglip"),
                 "--out", str(root / "ppllava-ov")]) == 0
    return load_model(root / "ppllava-ov").eval()


def test_onevision_siglip_conversion_keeps_every_part(folders, converted_ov):
    root, models = folders
    base, dual, model = models["ov"].eval(), models["siglip"].eval(), converted_ov
    config = model.config
    assert config.tower_family().name == "siglip" and config.patch_grid == 27
    assert config.visual_tokens(32, True) == 16 * 9 * 9 and config.visual_tokens(1, False) == 81
    assert config.prompt_config.max_position_embeddings == 196
    assert config.relevance_scale == pytest.approx(float(torch.tensor(4.7).exp()), rel=1e-6)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "full")
    ids = torch.randint(2, 200, (2, 9))
    with torch.no_grad():
        # the LLM, text-only, gives the base's logits
        assert torch.equal(model.language_model(input_ids=ids).logits, base(input_ids=ids).logits)
        # the prompt tower gives SigLIP's text features for a prompt within the first 20 positions
        short = ids[:, :8]
        siglip = dual.get_text_features(input_ids=short)
        assert torch.equal(model.prompt_pooling.encode_prompt(short), getattr(siglip, "pooler_output", siglip))
        # the position table, stretched as DESIGN.md says: SigLIP's 64 -> 4*64 - 3*20 = 196 rows, the first 20
        # kept, then every 4th row a pretrained one with 3 evenly spaced between neighbours (Long-CLIP's loop)
        positions = model.prompt_pooling.prompt_tower.embeddings.position_embedding.weight.double()
        pretrained = dual.text_model.embeddings.position_embedding.weight.double()
        assert positions.shape == (196, 32)
        torch.testing.assert_close(positions, long_clip_positions(pretrained), rtol=0, atol=1e-6)
        p, old = positions, pretrained                                          # and a few rows by hand
        assert torch.equal(p[:20], old[:20])
        for new_row, expected in [(20, old[20]), (21, 0.75 * old[20] + 0.25 * old[21]), (22, (old[20] + old[21]) / 2),
                                  (24, old[21]), (27, 0.25 * old[21] + 0.75 * old[22]), (192, old[63]),
                                  (195, old[63] + 0.75 * (old[63] - old[62]))]:
            torch.testing.assert_close(p[new_row], expected, rtol=0, atol=1e-6, msg=f"row {new_row}")
        # the per-patch projection is SigLIP's image head applied to one token at a time
        tokens = torch.randn(5, 1, 32)
        expected = dual.vision_model.head(dual.vision_model.post_layernorm(tokens))
        torch.testing.assert_close(model.prompt_pooling.patch_projection(tokens[:, 0]), expected)
    for name in ("linear_1", "linear_2"):
        assert torch.equal(getattr(model.multi_modal_projector, name).weight,
                           getattr(base.model.multi_modal_projector, name).weight)
    prompt_tokenizer = AutoTokenizer.from_pretrained(root / "ppllava-ov" / "prompt_tokenizer")
    assert prompt_tokenizer.model_max_length == 196
    assert AutoTokenizer.from_pretrained(root / "ppllava-ov").convert_tokens_to_ids("<video>") == config.video_token_id


def test_converted_model_generates_what_a_greedy_loop_over_its_forward_picks(converted_ov):
    # the converted LLM ties its head to the embeddings, so a random one repeats its last token forever; an untied
    # random head (a copy of the model) makes every step's choice depend on the tokens before it
    model = copy.deepcopy(converted_ov)
    model.config.project_before_pooling = False      # with these random weights its greedy tokens vary (see the end)
    head = model.language_model.lm_head
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) / 2)
    # row 0 (a 2-frame video: 81 tokens) is left-padded to row 1's two images (162 tokens)
    batch = make_batch(model.config, [(2, True, 0), (1, False, 1), (1, False, 1)], prompt_len=196, seed=1)
    batch["prompt_input_ids"][:, :] = torch.randint(2, 200, batch["prompt_input_ids"].shape,
                                                    generator=torch.Generator().manual_seed(1))
    assert batch["attention_mask"].sum(1).tolist() == [81 + 6, 162 + 6]
    steps = 5
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=steps, do_sample=False)
        # by hand: no cache, every step the whole sequence again, the highest logit of its last position
        first = model(**batch).logits[:, -1]                       # the full forward: visuals through the pooling
        embeds = model.embed_inputs(**{k: v for k, v in batch.items() if k != "attention_mask"})
        mask, picked = batch["attention_mask"], []
        for step in range(steps):
            logits = model.language_model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
            if step == 0:
                torch.testing.assert_close(logits, first)
            token = logits.argmax(-1)
            picked.append(token)
            embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    picked = torch.stack(picked, dim=1)
    assert torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"])
    assert torch.equal(out[:, batch["input_ids"].shape[1]:], picked), (out[:, -steps:], picked)
    assert all(len(set(row)) > 2 for row in picked.tolist())         # no repeated token hides an off-by-one


def test_next_clip_conversion(folders, tmp_path):
    root, models = folders
    config = convert(root / "next", root / "clip", tmp_path / "out")
    assert config.tower_family().name == "clip" and config.prompt_config.max_position_embeddings == 248
    assert config.visual_tokens(32, True) == 1024 and config.visual_tokens(1, False) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]          # no partial folder left behind
    with pytest.raises(ValueError, match="already exists and is not an empty folder"):
        convert(root / "next", root / "clip", tmp_path / "out")
    model = load_model(tmp_path / "out").eval()
    dual = models["clip"].eval()
    positions = model.prompt_pooling.prompt_tower.text_model.embeddings.position_embedding.weight.double()
    pretrained = dual.text_model.embeddings.position_embedding.weight.double()
    assert positions.shape[0] == 4 * 77 - 3 * 20 == 248
    torch.testing.assert_close(positions, long_clip_positions(pretrained), rtol=0, atol=1e-6)
    ids = torch.randint(2, 200, (1, 12))
    ids[0, -1] = 1
    with torch.no_grad():
        clip = dual.get_text_features(input_ids=ids)
        clip = getattr(clip, "pooler_output", clip)
        torch.testing.assert_close(model.prompt_pooling.encode_prompt(ids), clip)
        patches = torch.randn(3, 32)
        torch.testing.assert_close(model.prompt_pooling.patch_projection(patches),
                                   dual.visual_projection(dual.vision_model.post_layernorm(patches)))


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = config
        *parents, key = dotted.split(".")
        for p in parents:
            node = node[p]
        node[key] = value
    path.write_text(json.dumps(config))


def test_conversion_errors_name_the_mismatch(folders, tmp_path, capsys):
    root, _ = folders
    # a bare text model has no visual projection
    save_siglip_pair(tmp_path / "text-only")
    _edit_config(tmp_path / "text-only", model_type="siglip_text_model")
    with pytest.raises(ValueError, match="missing the visual projection"):
        convert(root / "ov", tmp_path / "text-only", tmp_path / "out")
    # the other family's text tower
    with pytest.raises(ValueError, match="must be one pair"):
        convert(root / "ov", root / "clip", tmp_path / "out")
    # a SigLIP whose vision width is not the base's
    save_siglip_pair(tmp_path / "wide", vision_hidden=48)
    with pytest.raises(ValueError, match="vision hidden size mismatch: the base's vision tower has 32.*48"):
        convert(root / "ov", tmp_path / "wide", tmp_path / "out")
    # not a base we know
    with pytest.raises(ValueError, match="unknown base architecture 'siglip'"):
        convert(root / "siglip", root / "siglip", tmp_path / "out")
    # on the command line: one line, exit 2
    capsys.readouterr()
    assert main(["convert", "--base", str(tmp_path / "nowhere"), "--text-tower", str(root / "siglip"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json" in err[0]
    assert not (tmp_path / "out").exists()


def test_load_names_a_checkpoint_that_does_not_fit(converted_ov, tmp_path):
    converted_ov.save_pretrained(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", **{"text_config.hidden_size": 96})
    with pytest.raises(ValueError, match=r"does not fit its config: .*language_model\.model\.embed_tokens\.weight is "
                                         r"\[\d+, 64\] but the config needs \[\d+, 96\]"):
        load_model(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", model_type="llava_onevision")
    with pytest.raises(ValueError, match="is a 'llava_onevision' model, not ppllava"):
        load_model(tmp_path / "ckpt")
