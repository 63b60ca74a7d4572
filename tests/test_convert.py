"""`ppllava convert` from tiny saved LLaVA-OneVision + SigLIP and LLaVA-NeXT + CLIP pairs (no download)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from ppllava.model.synthetic import make_batch
from ppllava.cli import main
from ppllava.model import extend_positions, load_model
from ppllava.model.convert import convert
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
        positions = model.prompt_pooling.prompt_tower.embeddings.position_embedding.weight
        assert torch.equal(positions, extend_positions(dual.text_model.embeddings.position_embedding.weight))
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


def test_converted_model_generates(converted_ov):
    batch = make_batch(converted_ov.config, [(2, True, 0), (1, False, 1)], prompt_len=196, seed=1)
    batch["prompt_input_ids"][:, :] = torch.randint(2, 200, batch["prompt_input_ids"].shape)
    with torch.no_grad():
        out = converted_ov.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


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
