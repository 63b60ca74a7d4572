"""Tiny random checkpoints laid out as the authors' PPLLaVA releases are (farewellthree/ppllava_weight).

    write_authors_checkpoint(family, directory, *, seed=0, dtype="bfloat16") -> {"model": Path, "text_tower": Path}
    add_stray_tensor(folder, name, shape=(4,)) -> Path          (the shard it rewrote)
    FACTS[family]                                                (what a test may assert about a written folder)

`family` is "vicuna" (LLaVA-NeXT Vicuna-7B base, CLIP ViT-L/14-336 vision tower with BT-Adapter, CLIP text tower
extended 77 -> 248 positions) or "qwen" (LLaVA-OneVision Qwen2-7B base, SigLIP so400m vision tower, no BT-Adapter,
SigLIP text tower extended 64 -> 196, `qwen: true`). Into `directory` (created; must be empty or absent) go

    directory/ppllava_vicuna7b_image_video/        (qwen: ppllava_qwen7b_llavahound300k/)
        config.json  generation_config.json
        model-0000i-of-00003.safetensors  model.safetensors.index.json      (qwen: 4 shards)
        the base's tokenizer files, chat_template.json, processor_config.json, preprocessor_config.json
    directory/clip-vit-large-patch14-336/          (qwen: siglip-so400m-patch14-384/)
        the vanilla dual model the user passes as --text-tower (hub_bases.write_tower: 77 / 64 positions, as the
        Hub ships them; nothing of it is in the PPLLaVA folder's weights except by shape)

Every tensor is random (torch.Generator seeded with `seed` and the family), none at its init value: temporal_fc is
not zero (their init), the BT-Adapter spatial layers are not copies of the CLIP layers (their init_weights),
`position_embedding` and `position_embedding_res` are independent (they start as one table), logit_scale is 4.5
(CLIP; exp = 90.0, not 100) and 4.7 (SigLIP), logit_bias -12.5. Weights are stored in `dtype` (their bf16 by
default; the ZeRO-3 bf16 save), config torch_dtype says the same.

Where each fact comes from (paths in farewellthree/PPLLaVA at d5766c8; "ORIGINAL" is /work/shared/ORIGINAL.md)
  * Weight names, each from the module that owns it and the order state_dict() gives (own parameters before
    children): ppllava/models/llava_interleave.py LlavaInterleaveForConditionalGeneration.__init__ registers
    vision_tower, multi_modal_projector, language_model (AutoModelForCausalLM: language_model.model.*,
    language_model.lm_head.weight) and the parameter image_newline.
    - vision_tower with btadapter: clip_btadapter.py CLIPVisionModel_BTAdapter.vision_model =
      CLIPVisionTransformer_BTAdapter, which keeps the CLIP ViT's encoder, embeddings (class_embedding,
      patch_embedding without bias, position_embedding), pre_layrnorm, post_layernorm under their transformers
      4.45 names, then btadapter_S_layers.{i} (CLIPLayer_Spatial: self_attn.{k,v,q,out}_proj, layer_norm1, mlp.fc1,
      mlp.fc2, layer_norm2), btadapter_T_layers.{i} (CLIPLayer_AttnTime: self_attn.*, layer_norm1, temporal_fc),
      btadapter_time_embed.weight (nn.Embedding(max_T, D)), btadapter_cls_token (1 x 1 x D). DropPath / Dropout
      hold nothing. position_ids buffers are not persistent in 4.45, so not saved.
    - vision_tower without btadapter: AutoModel.from_config(vision_config) = transformers 4.45 SiglipVisionModel:
      vision_model.{embeddings.patch_embedding (with bias), embeddings.position_embedding, encoder.layers.*,
      post_layernorm}; no head, as vision_use_head is false in LLaVA-OneVision's config (hub_bases writes it so).
    - llava_projector.py LLaVACLIP3DMultiModalProjector: linear_1, linear_2, clip_text_model (= the CLIPModel's
      text_model, a CLIPTextTransformer: embeddings, encoder, final_layer_norm), clip_visual_projection,
      clip_visual_ln (the dual model's vision post_layernorm), clip_text_projection, logit_scale (a 0-d
      parameter, as CLIPModel's). The embeddings are clip.py ExtendTextEmbeddings after convert_text_position:
      token_embedding.weight and the two bare parameters position_embedding, position_embedding_res of
      4 * 77 - 3 * 20 = 248 rows (mask1 / mask2 are plain tensors, not saved).
    - LLaVASiglip3DMultiModalProjector: linear_1, linear_2, clip_text_model (SiglipTextTransformer: embeddings,
      encoder, final_layer_norm, head), clip_visual_head = siglip.py SiglipPoolingHead_PatchCLS(vision_config)
      (probe; attention = their MultiheadAttention: in_proj_weight, in_proj_bias, out_proj; layernorm; mlp =
      SiglipMLP fc1 / fc2), clip_visual_ln, logit_scale and logit_bias (shape (1,), as SiglipModel's).
      Positions 4 * 64 - 60 = 196.
    - The LLM's names and shapes are taken from transformers' own Llama / Qwen2 causal LM built (on the meta device)
      from text_config; they are the same in 4.45.
  * config.json: the base's config.json as hub_bases writes it (_base_config; llava_next / llava_onevision), with:
    - architectures ["LlavaInterleaveForConditionalGeneration"] (save_pretrained writes the class name);
      model_type stays the base's (LlavaNextVidConfig / LlavaOnevisionVidConfig define none of their own).
    - the keys llava_interleave.py from_config sets on the config it builds and then saves (the training yaml's
      values, config/vicuna/ppllava_vicuna7b_image_video.yaml and config/qwen/ppllava_qwen7b_videoonly.yaml, else
      from_config's defaults): qwen (set for both families: false for Vicuna), pooling "ppllava", clip_weight
      (the Hub id string), clip_post_pretrain null, btadapter, btadapter_depth, max_T, extend_clip true,
      pooling_temp 0.01, valuew_plus false (set for both; LlavaOnevisionVidConfig.__init__ also sets it),
      pooling_kernel / pooling_stride [2, 3, 3], image_pooling_kernel / image_pooling_stride [1, 3, 3],
      frame_shape [g, g]. pllava_pooling_shape is not written: it stays a class attribute of PPLLaVAConfig
      (to_dict saves the instance's __dict__ only) as the yamls give none.
    - pad_token_id 0 / 151643 (LlavaNextVidConfig / LlavaOnevisionVidConfig.__init__).
    - hidden_size = text_config.hidden_size (LlavaInterleaveForConditionalGeneration.__init__ sets it on the config).
    - vision_config.depth and vision_config.max_T (the same __init__ writes them into vision_config with btadapter).
    - transformers_version "4.45.2" (requirement.txt pins it); torch_dtype = dtype.
    Kept from the base: image_token_index (32000 / 151646), vocab sizes (32064 / 152128), vision_feature_layer and
    select strategy (-2 "default" / -1 "full"), image_grid_pinpoints (the real ones: image_size stays 336 / 384),
    projector_hidden_act, tie_word_embeddings false, use_image_newline_parameter, ...
  * Shrunk: LLM as hub_bases.LLM (2 layers of 64); vision tower 4 layers of hub_bases.VISION's width (32, 4 heads),
    btadapter_depth 3 (so hidden_states[-2] is built with two adapter layers), max_T 8 (Vicuna; Qwen keeps
    from_config's default 64, unused); patch 56 on CLIP's 336 px (a 6 x 6 grid) and 32 on SigLIP's 384 px
    (12 x 12): the image sizes, and so the pinpoints and the preprocessors, stay the Hub's; the 3 x 3 kernel tiles
    both grids. The text towers are hub_bases.write_tower's (2 layers of 32; CLIP projection 32).
  * Tokenizer files, chat_template.json, processor_config.json, preprocessor_config.json: hub_bases' files of the
    base (ORIGINAL: the folder holds the base's tokenizer and template). Their train_hf.py hands no tokenizer to
    its Trainer, so these files in the Hub folder were put there by hand or by another script: inferred.
  * generation_config.json: what save_pretrained derives from the config (bos / eos / pad of the LLM): inferred.
  * Inferred, not seen: the shard count for Qwen (4: about 16 GB of bf16 at transformers' default 5 GB shards;
    Vicuna's 3 is ORIGINAL's), the file order inside shards, the Qwen folder's base files taken from hub_bases'
    llava-onevision-qwen2-7b-ov (their yaml names the -si repository: same class, tokenizer and template).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import hub_bases

VISION_LAYERS = 4
BTADAPTER_DEPTH = 3
KEEP = 20                       # convert_text_position's keep_len
VISUAL_LN_GAIN = 0.1            # clip_visual_ln's scale against its bias: keeps the relevance map from one-hot


@dataclass(frozen=True)
class AuthorsFacts:
    folder: str                 # the release's folder name
    base: str                   # hub_bases.BASES key of the base it started from
    tower: str                  # hub_bases.TOWERS key of the dual model (--text-tower)
    clip_weight: str            # the Hub id their yaml names
    image_size: int
    patch_size: int
    grid: int                   # patches per side of one frame / crop
    btadapter: bool
    max_T: int
    text_positions: int         # rows of the extended tables (4 * n - 60)
    vanilla_positions: int      # the tower's own
    image_token_index: int
    pad_token_id: int
    vocab_size: int
    vision_feature_layer: int
    select_strategy: str
    shards: int
    logit_scale: float
    logit_bias: float | None
    seed_offset: int


FACTS = {
    "vicuna": AuthorsFacts(
        folder="ppllava_vicuna7b_image_video", base="llava-next-vicuna-7b", tower="clip-vit-large-patch14-336",
        clip_weight="openai/clip-vit-large-patch14-336", image_size=336, patch_size=56, grid=6, btadapter=True,
        max_T=8, text_positions=4 * 77 - 3 * KEEP, vanilla_positions=77, image_token_index=32000, pad_token_id=0,
        vocab_size=32064, vision_feature_layer=-2, select_strategy="default", shards=3, logit_scale=4.5,
        logit_bias=None, seed_offset=1000),
    "qwen": AuthorsFacts(
        folder="ppllava_qwen7b_llavahound300k", base="llava-onevision-qwen2-7b-ov", tower="siglip-so400m-patch14-384",
        clip_weight="google/siglip-so400m-patch14-384", image_size=384, patch_size=32, grid=12, btadapter=False,
        max_T=64, text_positions=4 * 64 - 3 * KEEP, vanilla_positions=64, image_token_index=151646,
        pad_token_id=151643, vocab_size=152128, vision_feature_layer=-1, select_strategy="full", shards=4,
        logit_scale=4.7, logit_bias=-12.5, seed_offset=2000),
}


# ------------------------------------------------------------------------------------------------ config.json


def authors_config(family: str, dtype: str = "bfloat16") -> dict:
    """The config.json their save_pretrained writes for `family` (see the module docstring for each key)."""
    facts = FACTS[family]
    config, _ = hub_bases._base_config(facts.base, dtype)
    vision = dict(config["vision_config"])
    vision.update(num_hidden_layers=VISION_LAYERS, patch_size=facts.patch_size, image_size=facts.image_size)
    if facts.btadapter:
        vision.update(depth=BTADAPTER_DEPTH, max_T=facts.max_T)
    config.update(
        architectures=["LlavaInterleaveForConditionalGeneration"], vision_config=vision,
        qwen=family == "qwen", pooling="ppllava", clip_weight=facts.clip_weight, clip_post_pretrain=None,
        btadapter=facts.btadapter, btadapter_depth=BTADAPTER_DEPTH if facts.btadapter else 4, max_T=facts.max_T,
        extend_clip=True, pooling_temp=0.01, valuew_plus=False,
        pooling_kernel=[2, 3, 3], pooling_stride=[2, 3, 3], image_pooling_kernel=[1, 3, 3],
        image_pooling_stride=[1, 3, 3], frame_shape=[facts.grid, facts.grid],
        pad_token_id=facts.pad_token_id, hidden_size=config["text_config"]["hidden_size"],
        torch_dtype=dtype, transformers_version="4.45.2")
    return config


def _generation_config(family: str) -> dict:
    if family == "vicuna":
        ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    else:
        ids = {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}
    return {"_from_model_config": True, **ids, "transformers_version": "4.45.2"}


# ------------------------------------------------------------------------------------------------ tensor names


def _linear(prefix, out_dim, in_dim, bias=True):
    yield f"{prefix}.weight", (out_dim, in_dim)
    if bias:
        yield f"{prefix}.bias", (out_dim,)


def _norm(prefix, dim):
    yield f"{prefix}.weight", (dim,)
    yield f"{prefix}.bias", (dim,)


def _attention(prefix, dim):
    for name in ("k_proj", "v_proj", "q_proj", "out_proj"):       # CLIPAttention / SiglipAttention order
        yield from _linear(f"{prefix}.{name}", dim, dim)


def _encoder_layer(prefix, dim, inner):
    yield from _attention(f"{prefix}.self_attn", dim)
    yield from _norm(f"{prefix}.layer_norm1", dim)
    yield from _linear(f"{prefix}.mlp.fc1", inner, dim)
    yield from _linear(f"{prefix}.mlp.fc2", dim, inner)
    yield from _norm(f"{prefix}.layer_norm2", dim)


def _text_transformer(prefix, dim, inner, layers, vocab, positions, head):
    yield f"{prefix}.embeddings.position_embedding", (positions, dim)
    yield f"{prefix}.embeddings.position_embedding_res", (positions, dim)
    yield f"{prefix}.embeddings.token_embedding.weight", (vocab, dim)
    for i in range(layers):
        yield from _encoder_layer(f"{prefix}.encoder.layers.{i}", dim, inner)
    yield from _norm(f"{prefix}.final_layer_norm", dim)
    if head:
        yield from _linear(f"{prefix}.head", dim, dim)


def _llm_names(text_config: dict):
    from transformers import AutoConfig, AutoModelForCausalLM
    fields = dict(text_config)
    conf = AutoConfig.for_model(fields.pop("model_type"), **fields)
    conf.tie_word_embeddings = False
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    for name, tensor in model.state_dict().items():
        yield f"language_model.{name}", tuple(tensor.shape)


def authors_tensor_names(family: str, config: dict | None = None) -> list[tuple[str, tuple]]:
    """(name, shape) of every tensor their model's state_dict() holds, in its order."""
    facts = FACTS[family]
    config = config or authors_config(family)
    tower = hub_bases._tower_config(facts.tower)
    vc, tc = config["vision_config"], config["text_config"]
    d, inner, hidden = vc["hidden_size"], vc["intermediate_size"], tc["hidden_size"]
    n_patches = (vc["image_size"] // vc["patch_size"]) ** 2
    ttc = tower["text_config"]
    t_dim, t_inner, t_layers = ttc["hidden_size"], ttc["intermediate_size"], ttc["num_hidden_layers"]
    tower_vision_dim = tower["vision_config"]["hidden_size"]
    if tower_vision_dim != d:
        raise ValueError(f"the tower's vision width {tower_vision_dim} must be the vision tower's {d}")

    names = [("image_newline", (hidden,))]
    v = "vision_tower.vision_model"
    if facts.btadapter:
        names.append((f"{v}.btadapter_cls_token", (1, 1, d)))
        for i in range(vc["num_hidden_layers"]):
            names += _encoder_layer(f"{v}.encoder.layers.{i}", d, inner)
        names += [(f"{v}.embeddings.class_embedding", (d,)),
                  (f"{v}.embeddings.patch_embedding.weight", (d, 3, vc["patch_size"], vc["patch_size"])),
                  (f"{v}.embeddings.position_embedding.weight", (n_patches + 1, d))]
        names += _norm(f"{v}.pre_layrnorm", d)
        names += _norm(f"{v}.post_layernorm", d)
        for i in range(vc["depth"]):
            names += _encoder_layer(f"{v}.btadapter_S_layers.{i}", d, inner)
        for i in range(vc["depth"]):
            names += _attention(f"{v}.btadapter_T_layers.{i}.self_attn", d)
            names += _norm(f"{v}.btadapter_T_layers.{i}.layer_norm1", d)
            names += _linear(f"{v}.btadapter_T_layers.{i}.temporal_fc", d, d)
        names.append((f"{v}.btadapter_time_embed.weight", (vc["max_T"], d)))
    else:
        names += [(f"{v}.embeddings.patch_embedding.weight", (d, 3, vc["patch_size"], vc["patch_size"])),
                  (f"{v}.embeddings.patch_embedding.bias", (d,)),
                  (f"{v}.embeddings.position_embedding.weight", (n_patches, d))]
        for i in range(vc["num_hidden_layers"]):
            names += _encoder_layer(f"{v}.encoder.layers.{i}", d, inner)
        names += _norm(f"{v}.post_layernorm", d)

    p = "multi_modal_projector"
    if family == "vicuna":
        proj = tower["projection_dim"]
        names.append((f"{p}.logit_scale", ()))
        names += _linear(f"{p}.linear_1", hidden, d)
        names += _linear(f"{p}.linear_2", hidden, hidden)
        names += _text_transformer(f"{p}.clip_text_model", t_dim, t_inner, t_layers, ttc["vocab_size"],
                                   facts.text_positions, head=False)
        names += _linear(f"{p}.clip_visual_projection", proj, tower_vision_dim, bias=False)
        names += _norm(f"{p}.clip_visual_ln", tower_vision_dim)
        names += _linear(f"{p}.clip_text_projection", proj, t_dim, bias=False)
    else:
        names += [(f"{p}.logit_scale", (1,)), (f"{p}.logit_bias", (1,))]
        names += _linear(f"{p}.linear_1", hidden, d)
        names += _linear(f"{p}.linear_2", hidden, hidden)
        names += _text_transformer(f"{p}.clip_text_model", t_dim, t_inner, t_layers, ttc.get("vocab_size", 32000),
                                   facts.text_positions, head=True)
        h = f"{p}.clip_visual_head"
        names += [(f"{h}.probe", (1, 1, d)), (f"{h}.attention.in_proj_weight", (3 * d, d)),
                  (f"{h}.attention.in_proj_bias", (3 * d,))]
        names += _linear(f"{h}.attention.out_proj", d, d)
        names += _norm(f"{h}.layernorm", d)
        names += _linear(f"{h}.mlp.fc1", inner, d)
        names += _linear(f"{h}.mlp.fc2", d, inner)
        names += _norm(f"{p}.clip_visual_ln", tower_vision_dim)
    names += _llm_names(tc)
    return names


# ------------------------------------------------------------------------------------------------ values


def _is_norm_weight(name: str) -> bool:
    parts = name.split(".")
    return parts[-1] == "weight" and any(k in parts[-2] for k in ("norm", "layrnorm", "_ln"))


def _value(name: str, shape: tuple, gen: torch.Generator, facts: AuthorsFacts) -> torch.Tensor:
    def randn(*s):
        return torch.randn(*s, generator=gen)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "logit_scale":
        return torch.full(shape, facts.logit_scale)
    if leaf == "logit_bias":
        return torch.full(shape, facts.logit_bias)
    if name.endswith("clip_visual_ln.weight"):      # a shared direction dominates the patch embeddings, as in
        return VISUAL_LN_GAIN * (1.0 + 0.1 * randn(shape))      # CLIP: cosines spread ~0.02, logits ~1-2
    if name.endswith("clip_visual_ln.bias"):
        return randn(shape)
    if _is_norm_weight(name):
        return 1.0 + 0.1 * randn(shape)
    if leaf in ("bias", "in_proj_bias"):
        return 0.05 * randn(shape)
    if leaf in ("class_embedding", "btadapter_cls_token", "probe"):
        return 0.5 * randn(shape)
    if name == "image_newline":
        return 0.1 * randn(shape)
    if leaf in ("position_embedding", "position_embedding_res"):
        return 0.3 * randn(shape)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return randn(shape) / math.sqrt(fan_in)


def authors_state_dict(family: str, *, seed: int = 0, dtype=torch.bfloat16, config: dict | None = None) -> dict:
    facts = FACTS[family]
    gen = torch.Generator().manual_seed(seed + facts.seed_offset)
    return {name: _value(name, shape, gen, facts).to(dtype).contiguous()
            for name, shape in authors_tensor_names(family, config)}


# ------------------------------------------------------------------------------------------------ writing


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _write_shards(out: Path, state: dict, shards: int) -> None:
    """Sequential shards of about equal size, as transformers' save_pretrained names and indexes them."""
    from safetensors.torch import save_file
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    total = sum(sizes.values())
    budget = total / shards
    groups, current, acc = [], [], 0
    for name in state:
        if current and acc + sizes[name] > budget and len(groups) < shards - 1:
            groups.append(current)
            current, acc = [], 0
        current.append(name)
        acc += sizes[name]
    groups.append(current)
    while len(groups) < shards:                 # never fewer files than announced
        groups.insert(len(groups) - 1, [groups[-1].pop(0)])
    weight_map = {}
    for i, group in enumerate(groups, 1):
        filename = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k] for k in group}, out / filename, metadata={"format": "pt"})
        weight_map.update({k: filename for k in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(_json(index), encoding="utf-8")


def write_authors_checkpoint(family: str, directory, *, seed: int = 0, dtype: str | torch.dtype = "bfloat16"
                             ) -> dict[str, Path]:
    """Write the tiny PPLLaVA release of `family` ("vicuna" or "qwen") and its vanilla text-tower folder under
    `directory`; returns {"model": its folder, "text_tower": the dual model's folder}."""
    if family not in FACTS:
        raise KeyError(f"unknown family {family!r}; one of {', '.join(FACTS)}")
    facts = FACTS[family]
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dtype_name = str(torch_dtype).removeprefix("torch.")
    root = Path(directory)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} already exists and is not an empty folder")
    out = root / facts.folder
    out.mkdir(parents=True)
    config = authors_config(family, dtype_name)
    files = {"config.json": _json(config), "generation_config.json": _json(_generation_config(family)),
             **hub_bases._tokenizer_files(facts.base), **hub_bases._processor_files(facts.base)}
    for name, content in files.items():
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            (out / name).write_text(content, encoding="utf-8")
    _write_shards(out, authors_state_dict(family, seed=seed, dtype=torch_dtype, config=config), facts.shards)
    tower = hub_bases.write_tower(facts.tower, root / facts.tower)
    return {"model": out, "text_tower": tower}


def add_stray_tensor(folder, name: str, shape=(4,)) -> Path:
    """Rewrite the checkpoint in `folder` with one more tensor `name` (random, the checkpoint's dtype) in its last
    shard, index updated; returns that shard's path."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if name in index["weight_map"]:
            raise ValueError(f"{name} is already in {index_path}")
        shard = folder / sorted(set(index["weight_map"].values()))[-1]
    else:
        index, shard = None, folder / "model.safetensors"
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(shard)
    if name in tensors:
        raise ValueError(f"{name} is already in {shard}")
    dtype = next(iter(tensors.values())).dtype
    tensors[name] = torch.randn(*shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    tmp = shard.with_name(shard.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, shard)
    if index is not None:
        index["weight_map"][name] = shard.name
        index["metadata"]["total_size"] += tensors[name].numel() * tensors[name].element_size()
        index_path.write_text(_json(index), encoding="utf-8")
    return shard


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Write a tiny authors-layout PPLLaVA release and its text tower.")
    parser.add_argument("family", choices=sorted(FACTS))
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_authors_checkpoint(args.family, args.directory, seed=args.seed))
