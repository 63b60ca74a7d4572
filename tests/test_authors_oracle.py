"""The authors-layout checkpoints (authors_layout.py) and the oracle re-reading their forward (authors_oracle.py)
checked against their formulas and against transformers where the two meet. A few seconds on two cores."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import authors_layout
from authors_oracle import AuthorsModel, anyres_grid, unpad

DT = torch.float64


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    return {family: authors_layout.write_authors_checkpoint(family, root / family) for family in authors_layout.FACTS}


@pytest.fixture(scope="module")
def models(written):
    return {family: AuthorsModel(paths["model"], paths["text_tower"]) for family, paths in written.items()}


@pytest.mark.parametrize("family", ["vicuna", "qwen"])
def test_layout(written, family, tmp_path):
    facts = authors_layout.FACTS[family]
    folder = written[family]["model"]
    assert folder.name == facts.folder
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlavaInterleaveForConditionalGeneration"]
    assert config["model_type"] == ("llava_next" if family == "vicuna" else "llava_onevision")
    assert config["qwen"] is (family == "qwen") and config["pad_token_id"] == facts.pad_token_id
    assert config["frame_shape"] == [facts.grid, facts.grid] and config["clip_weight"] == facts.clip_weight
    assert ("depth" in config["vision_config"]) is facts.btadapter
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names = set(index["weight_map"])
    assert len(set(index["weight_map"].values())) == facts.shards
    p = "multi_modal_projector."
    assert {"image_newline", "language_model.lm_head.weight", p + "logit_scale",
            p + "clip_text_model.embeddings.position_embedding",
            p + "clip_text_model.embeddings.position_embedding_res", p + "clip_visual_ln.weight"} <= names
    if family == "vicuna":
        v = "vision_tower.vision_model."
        assert {v + "btadapter_cls_token", v + "btadapter_time_embed.weight",
                v + "btadapter_T_layers.2.temporal_fc.weight", v + "btadapter_S_layers.2.mlp.fc2.bias",
                v + "pre_layrnorm.weight", p + "clip_text_projection.weight",
                p + "clip_visual_projection.weight"} <= names
    else:
        assert {p + "logit_bias", p + "clip_visual_head.attention.in_proj_weight", p + "clip_visual_head.probe",
                p + "clip_text_model.head.weight"} <= names
        assert not any("btadapter" in n or "vision_model.head" in n for n in names)
    state = AuthorsModel(folder, written[family]["text_tower"]).state
    e = p + "clip_text_model.embeddings."
    assert state[e + "position_embedding"].shape[0] == facts.text_positions
    assert ((state[e + "position_embedding"] - state[e + "position_embedding_res"]).abs().amax(1) > 0).all()
    if family == "vicuna":
        assert state["vision_tower.vision_model.btadapter_T_layers.0.temporal_fc.weight"].abs().min() > 0

    import shutil
    copy_dir = tmp_path / "copy"
    shutil.copytree(folder, copy_dir)
    shard = authors_layout.add_stray_tensor(copy_dir, "multi_modal_projector.stray")
    from safetensors import safe_open
    with safe_open(str(shard), framework="pt") as f:
        assert "multi_modal_projector.stray" in f.keys()
    assert "multi_modal_projector.stray" in json.loads((copy_dir / "model.safetensors.index.json").read_text())[
        "weight_map"]


def test_btadapter_one_frame_follows_their_formulas(models):
    """T = 1 (an image): the temporal layer is q + fc(out(v(LN q))), the spatial one an encoder layer; with the
    spatial layers copied from CLIP's (their init_weights) the states follow from transformers' CLIP layers."""
    from transformers import CLIPVisionModel
    m = models["vicuna"]
    v = "vision_tower.vision_model."
    hf = CLIPVisionModel(m.vision).to(DT).eval()
    hf.load_state_dict({k[len(v):]: t for k, t in m.state.items() if k.startswith(v) and "btadapter" not in k},
                       strict=False)
    k0 = m.vision.num_hidden_layers - m.depth
    mc = copy.copy(m)
    mc.state = dict(m.state)
    for i in range(m.depth):
        for k, t in m.state.items():
            if k.startswith(f"{v}encoder.layers.{k0 + i}."):
                mc.state[k.replace(f"encoder.layers.{k0 + i}.", f"btadapter_S_layers.{i}.")] = t
    x = torch.randn(2, 3, m.vision.image_size, m.vision.image_size, generator=torch.Generator().manual_seed(0),
                    dtype=DT)
    with torch.no_grad():
        hs = hf(pixel_values=x, output_hidden_states=True).hidden_states
    mine = mc.vision_hidden_states(x)

    def temporal(i, q):
        p = f"{v}btadapter_T_layers.{i}."
        h = F.layer_norm(q, q.shape[-1:], m.W(p + "layer_norm1.weight"), m.W(p + "layer_norm1.bias"), 1e-5)
        h = F.linear(h, m.W(p + "self_attn.v_proj.weight"), m.W(p + "self_attn.v_proj.bias"))
        h = F.linear(h, m.W(p + "self_attn.out_proj.weight"), m.W(p + "self_attn.out_proj.bias"))
        return q + F.linear(h, m.W(p + "temporal_fc.weight"), m.W(p + "temporal_fc.bias"))

    pos = m.W(v + "embeddings.position_embedding.weight")
    with torch.no_grad():
        c = hs[k0 + 1]
        b = torch.cat([(c[:, :1] + m.W(v + "btadapter_cls_token")[0] + pos[0]) / 2,
                       c[:, 1:] + pos[1:] + m.W(v + "btadapter_time_embed.weight")[0]], 1)
        for j in range(m.depth):
            if j:
                b = b + hs[k0 + j + 1]
            b = hf.encoder.layers[k0 + j](torch.cat([b[:, :1], temporal(j, b[:, 1:])], 1), None)
            want = torch.cat([hs[k0 + j + 1][:, :1], (hs[k0 + j + 1][:, 1:] + b[:, 1:]) / 2], 1)
            assert (mine[k0 + j + 1] - want).abs().max() < 1e-10
        for j in range(k0 + 1):
            assert (mine[j] - hs[j]).abs().max() < 1e-10


@pytest.mark.parametrize("family", ["vicuna", "qwen"])
def test_uniform_relevance_is_avg_pool(models, family):
    m = models[family]
    mu = copy.copy(m)
    mu.state = dict(m.state)
    scale = "multi_modal_projector.logit_scale"
    mu.state[scale] = torch.full_like(m.state[scale], -float("inf"))          # exp -> 0: every logit equal
    S, g = m.vision.image_size, m.frame_shape[0]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 300, (24,), generator=gen)
    video = torch.randn(5, 3, S, S, generator=gen, dtype=DT)                  # 5 frames: the last one is dropped
    out = mu.encode("video", video, ids)
    proj = m.project(m.selected_features(video[None] if m.btadapter else video)).reshape(5, g, g, -1)
    ref = F.avg_pool3d(proj.permute(3, 0, 1, 2)[None], m.video_kernel, m.video_stride)[0]
    assert (out["pooled"] - ref.permute(1, 2, 3, 0).reshape(-1, proj.shape[-1])).abs().max() < 1e-12
    guided = m.encode("video", video, ids)
    assert abs(guided["relevance"].sum().item() - 1) < 1e-12
    assert (guided["pooled"] - out["pooled"]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["vicuna", "qwen"])
def test_position_rows_and_anyres(models, family):
    m = models[family]
    e = "multi_modal_projector.clip_text_model.embeddings."
    n = m.state[e + "position_embedding"].shape[0]
    table = m.position_table(n)
    assert torch.equal(table[:20], m.W(e + "position_embedding")[:20])
    assert torch.equal(table[20:], m.W(e + "position_embedding_res")[20:])
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image
    S = m.vision.image_size
    for h in range(50, 2400, 97):
        for w in range(50, 2400, 131):
            rows, cols = anyres_grid((h, w), m.pinpoints, S)
            assert (rows, cols) == tuple(get_anyres_image_grid_shape([h, w], m.pinpoints, S))
            grid = torch.zeros(1, rows * 4, cols * 4)
            assert unpad(grid, (h, w)).shape == unpad_image(grid, [h, w]).shape


@pytest.mark.parametrize("family", ["vicuna", "qwen"])
def test_logits_shape_and_prefix(models, family):
    m = models[family]
    S = m.vision.image_size
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(5, 3, S, S, generator=gen, dtype=DT)
    ids = torch.tensor([1, 17, 23, m.image_token, 5, 6])
    clip_ids = torch.randint(1, 300, (16,), generator=gen)
    enc = m.encode("image", image, clip_ids, image_size=(600, 700))
    logits = m.logits(ids, [dict(media_type="image", pixel_values=image, image_size=(600, 700))], clip_ids)
    assert logits.shape == (len(ids) - 1 + enc["features"].shape[0], m.config["text_config"]["vocab_size"])
    with torch.no_grad():
        ref = m.llm(input_ids=ids[None, :3]).logits[0]
    assert (logits[:3] - ref).abs().max() < 1e-5
