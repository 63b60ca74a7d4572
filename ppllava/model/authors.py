"""convert from the authors' released checkpoints (Hugging Face farewellthree/ppllava_weight).

Their folders are a save_pretrained of their LlavaInterleaveForConditionalGeneration (model_type llava_next
for the Vicuna models, llava_onevision for the Qwen one), recognised here by their prompt tower's tensors
(`multi_modal_projector.clip_text_model.*`). Everything PPLLaVA trained is in them: the text tower with its
two position tables, the text and patch projections, the BT-Adapter, image_newline. The CLIP / SigLIP folder
their config names as clip_weight (passed as --text-tower) gives the tokenizer and the text config.

    theirs                                              ours
    vision_tower.vision_model.btadapter_*               btadapter.*        (config.btadapter_depth)
    vision_tower.vision_model.*                         vision_tower.*
    multi_modal_projector.linear_{1,2}                  multi_modal_projector.linear_{1,2}  (project_before_pooling)
    multi_modal_projector.clip_text_model.*             the prompt tower; position_embedding (rows < 20) and
                                                        position_embedding_res (the rest) merged into one table
    multi_modal_projector.clip_text_projection          the prompt tower's text_projection (CLIP)
    multi_modal_projector.clip_visual_ln / _projection  the patch projection (CLIP)
    multi_modal_projector.clip_visual_head              the patch projection's head, as their value head (SigLIP)
    multi_modal_projector.logit_scale                   config.relevance_scale = exp(logit_scale)
    multi_modal_projector.logit_bias                    dropped: it cancels in the relevance softmax
    language_model.*, image_newline                     language_model.*, image_newline
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig

from ..data import ChatEncoder
from .chat_format import base_chat_template, check_processor_tokens
from .config import PPLLaVAConfig
from .context import KEEP, STRETCH, extended_length
from .convert import _load_tokenizer, read_config, write_checkpoint
from .mapping import Ledger, Rule, UnmappedTensor
from .towers import BIAS, FAMILIES, family_of_dual

MARK = "multi_modal_projector.clip_text_model."
HEAD = "multi_modal_projector.clip_visual_head."
FROZEN, TRAINED = MARK + "embeddings.position_embedding", MARK + "embeddings.position_embedding_res"
SCALE = Rule("multi_modal_projector.logit_scale", None, "exp(logit_scale) -> config.relevance_scale",
             config="relevance_scale")
COMMON = (
    Rule("vision_tower.vision_model.btadapter_S_layers.", "btadapter.spatial.", "BT-Adapter spatial layers"),
    Rule("vision_tower.vision_model.btadapter_T_layers.", "btadapter.temporal.", "BT-Adapter temporal layers"),
    Rule("vision_tower.vision_model.btadapter_time_embed.", "btadapter.time_embed.", "BT-Adapter time embedding"),
    Rule("vision_tower.vision_model.btadapter_cls_token", "btadapter.cls_token", "BT-Adapter CLS token"),
    Rule("vision_tower.vision_model.", "vision_tower.", "the vision tower"),
    Rule("multi_modal_projector.linear_1.", "multi_modal_projector.linear_1.", "the MLP projector"),
    Rule("multi_modal_projector.linear_2.", "multi_modal_projector.linear_2.", "the MLP projector"),
    Rule("language_model.model.", "language_model.model.", "the LLM"),
    Rule("language_model.lm_head.", "language_model.lm_head.", "the LLM head"),
    Rule("image_newline", "image_newline", "image_newline, after each single image's tokens"),
)
TABLE = "positions {} of the merged prompt position table"
SHARED = (          # both families: the two position tables (merged in authors_state), the visual LayerNorm, the scale
    Rule(FROZEN, None, TABLE.format(f"0..{KEEP - 1} (frozen in their training)")),
    Rule(TRAINED, None, TABLE.format(f"{KEEP}.. (trained)")),
    Rule("multi_modal_projector.clip_visual_ln.", "prompt_pooling.patch_projection.post_layernorm.",
         "their visual LayerNorm -> patch projection"),
    SCALE,
)
VALUE_THIRD = "their value head: the value third of in_proj (query and key unused)"
FAMILY_RULES = {
    "clip": SHARED + (
        Rule(MARK, "prompt_pooling.prompt_tower.text_model.", "their trained CLIP text tower -> prompt tower"),
        Rule("multi_modal_projector.clip_text_projection.", "prompt_pooling.prompt_tower.text_projection.",
             "their text projection -> prompt tower"),
        Rule("multi_modal_projector.clip_visual_projection.", "prompt_pooling.patch_projection.visual_projection.",
             "their visual projection -> patch projection"),
    ),
    "siglip": SHARED + (
        Rule(MARK, "prompt_pooling.prompt_tower.", "their trained SigLIP text tower (with its head) -> prompt tower"),
        Rule(HEAD + "attention.in_proj_weight", "prompt_pooling.patch_projection.head.value.weight", VALUE_THIRD,
             part=(2, 3)),
        Rule(HEAD + "attention.in_proj_bias", "prompt_pooling.patch_projection.head.value.bias", VALUE_THIRD,
             part=(2, 3)),
        Rule(HEAD + "attention.out_proj.", None, "their value head skips the attention's output projection"),
        Rule(HEAD + "probe", None, "their value head has no query: the probe is unused"),
        Rule(HEAD, "prompt_pooling.patch_projection.head.", "their value head's LayerNorm and MLP -> patch projection"),
        Rule("multi_modal_projector.logit_bias", None, BIAS.why),
    ),
}


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / n for n in names]
    return sorted(directory.glob("*.safetensors"))


def authors_layout(directory) -> bool:
    """Whether a folder is one of the authors' checkpoints: their prompt tower's tensors, read from the headers."""
    for path in _weight_files(Path(directory)):
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if any(k.startswith(MARK) for k in f.keys()):
                    return True
    return False


def read_tensors(directory: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in _weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                tensors[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return tensors


def triple(value, name: str) -> list[int] | None:
    """Their kernels: a list, or the string their YAML held ("(2,3,3)"), read as a literal, never evaluated."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"config.json: {name} {value!r} is not three integers") from e
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value)):
        raise ValueError(f"config.json: {name} {value!r} is not three integers")
    return list(value)


def authors_config(theirs: dict, tower, tensors: dict[str, torch.Tensor]) -> PPLLaVAConfig:
    """Our config of one of their checkpoints: their config.json, the text tower's text config with the
    positions their table has, and what the tensors say (adapter depth, time embedding, logit scale)."""
    if theirs.get("pooling") != "ppllava":
        raise ValueError(f"config.json: pooling {theirs.get('pooling')!r}; only their prompt-guided pooling "
                         f"('ppllava') converts")
    missing = [k for k in (FROZEN, TRAINED, SCALE.prefix) if k not in tensors]
    if missing:
        raise UnmappedTensor(f"the checkpoint has their prompt tower but lacks {', '.join(missing)}: it is not a "
                             f"complete release folder (a shard missing from model.safetensors.index.json?)")
    family = family_of_dual(tower.model_type)
    vision = {k: v for k, v in theirs["vision_config"].items() if k not in ("depth", "max_T")}
    if FAMILIES[family.name].vision_model_type != vision.get("model_type"):
        raise ValueError(f"their vision tower is {vision.get('model_type')!r} but the text tower is a "
                         f"{tower.model_type!r} model: pass the CLIP/SigLIP their config names ({theirs.get('clip_weight')})")
    prompt = tower.text_config.to_dict()
    rows = tensors[FROZEN].shape[0]
    if rows != extended_length(prompt["max_position_embeddings"], KEEP, STRETCH):
        raise ValueError(f"their prompt position table has {rows} rows, not the {KEEP}/{STRETCH}x extension of the "
                         f"text tower's {prompt['max_position_embeddings']} positions: is this the tower they started from?")
    prompt["max_position_embeddings"] = rows
    adapter = sorted({int(k.split(".")[3]) for k in tensors if k.startswith("vision_tower.vision_model.btadapter_S_layers.")})
    if bool(theirs.get("btadapter")) != bool(adapter):
        raise ValueError(f"config.json: btadapter {theirs.get('btadapter')} but the checkpoint holds "
                         f"{len(adapter)} BT-Adapter layers")
    scale = tensors[SCALE.prefix].float()
    max_frames = tensors["vision_tower.vision_model.btadapter_time_embed.weight"].shape[0] if adapter else 64
    video_kernel = triple(theirs.get("pooling_kernel"), "pooling_kernel")
    image_kernel = triple(theirs.get("image_pooling_kernel"), "image_pooling_kernel") or video_kernel
    fields = dict(
        vision_config=vision, prompt_config=prompt, text_config=theirs["text_config"],
        vision_feature_layer=theirs.get("vision_feature_layer", -2),
        vision_feature_select_strategy=theirs.get("vision_feature_select_strategy", "default"),
        projector_hidden_act=theirs.get("projector_hidden_act", "gelu"),
        image_token_id=theirs.get("image_token_index", theirs.get("image_token_id")),
        video_token_id=None,                        # their videos sit at image tokens, as they were trained
        video_kernel=video_kernel,
        video_stride=triple(theirs.get("pooling_stride"), "pooling_stride") or video_kernel,
        image_kernel=image_kernel,
        image_stride=triple(theirs.get("image_pooling_stride"), "image_pooling_stride") or image_kernel,
        pooling_temperature=float(theirs.get("pooling_temp", 0.01)),
        relevance_scale=float(math.exp(float(scale))),
        project_before_pooling=True,                # their projectors run the MLP on every patch, then pool
        btadapter_depth=len(adapter),
        btadapter_max_frames=max_frames,
        siglip_patch_head="value" if family.name == "siglip" else "attention",
        image_newline="image_newline" in tensors,
        image_grid_pinpoints=theirs.get("image_grid_pinpoints"),
        frame_resize="squash",                      # their video processor resizes frames to a square
        prompt_context_extension=[KEEP, STRETCH],
        prompt_frozen_positions=KEEP,               # their frozen table holds the rows below 20
        default_frames=min(32, max_frames) if adapter else 32,    # their recipes train on 32 frames
    )
    if theirs.get("valuew_plus"):
        raise ValueError("config.json: valuew_plus true (relevance reweighted by the head's attention) is not supported")
    return PPLLaVAConfig(**fields)


def authors_state(tensors: dict[str, torch.Tensor], config: PPLLaVAConfig) -> Ledger:
    family = config.tower_family()
    ledger = Ledger()
    ledger.apply("checkpoint", tensors, FAMILY_RULES[family.name] + COMMON)
    frozen, trained = tensors[FROZEN], tensors[TRAINED]
    if frozen.shape != trained.shape:
        raise UnmappedTensor(f"their two prompt position tables differ in shape: {list(frozen.shape)} and "
                             f"{list(trained.shape)}")
    body = next(r.target for r in FAMILY_RULES[family.name] if r.prefix == MARK)
    ledger.merge("checkpoint", [FROZEN, TRAINED], body + "embeddings.position_embedding.weight",
                 torch.cat([frozen[:KEEP], trained[KEEP:]]), "merged, as their ExtendTextEmbeddings adds them")
    return ledger


def convert_authors(base_dir, theirs: dict, text_tower_dir, out: Path, dtype: torch.dtype | None) -> PPLLaVAConfig:
    """Write our checkpoint of one of their folders; `out` was checked by the caller."""
    base_dir = Path(base_dir)
    read_config(text_tower_dir, "text tower")                 # names a folder without one
    tower = AutoConfig.from_pretrained(text_tower_dir)       # the dual model's config, defaults filled in
    tokenizer, prompt_tokenizer = _load_tokenizer(base_dir, "base"), _load_tokenizer(text_tower_dir, "text tower")
    template, template_source = base_chat_template(base_dir, tokenizer, theirs.get("model_type"))
    tokenizer.chat_template = template
    tensors = read_tensors(base_dir, dtype)
    stored = next(t.dtype for k, t in tensors.items() if k.startswith("language_model."))
    config = authors_config(theirs, tower, tensors)
    check_processor_tokens(base_dir, tokenizer, config.image_token_id, None)
    config.dtype = stored
    encoder = ChatEncoder.for_config(tokenizer, config)
    ledger = authors_state(tensors, config)
    report = {"base": str(base_dir), "layout": "the authors' (farewellthree/PPLLaVA)", "text_tower": str(text_tower_dir),
              "dtype": str(stored).removeprefix("torch."), "relevance_scale": config.relevance_scale,
              "chat_template": template_source, "image_processing": "their video processor: squashed to a square",
              "content": encoder.style}
    write_checkpoint(out, base_dir, tokenizer, prompt_tokenizer, config, ledger, stored, report)
    return config
