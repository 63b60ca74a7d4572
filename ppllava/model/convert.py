"""Build PPLLaVA from a base multimodal model and its paired dual encoder (plug-and-play migration).

    base (LLaVA-NeXT: CLIP ViT + Llama; LLaVA-OneVision / LLaVA-Video: SigLIP + Qwen2;
          InternVL3: InternViT + Qwen2.5, transformers' InternVLForConditionalGeneration)
        vision tower, MLP projector, LLM          -> kept as they are (InternVL: its pixel shuffle too)
    text tower (the paired CLIP / SigLIP dual model; for InternVL the tower `ppllava align` wrote)
        text tower + text projection              -> prompt tower, positions extended
        vision post-LayerNorm + visual projection -> per-patch projection for the relevance map
          (InternVL: the aligned LayerNorm + linear)
        exp(logit_scale)                          -> config.relevance_scale
Everything is read from local folders; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoTokenizer, InternVLForConditionalGeneration, LlavaNextForConditionalGeneration,
                          LlavaOnevisionForConditionalGeneration)

from .checkpoint import PROMPT_TOKENIZER_DIR, save_weights
from .config import PPLLaVAConfig
from .context import KEEP, STRETCH, extend_positions, extended_length
from .towers import family_of_dual, family_of_vision

log = logging.getLogger(__name__)


def _no_fields(base_config) -> dict:
    return {}


def _internvl_fields(base_config) -> dict:
    """InternVL merges 2x2 patches (downsample_ratio 0.5) before its LayerNorm + MLP projector. Its 448-px
    frames then give 16x16 tokens, which the (2,3,3) kernel would not tile (the last row and column would be
    dropped): (2,2,2) / (1,2,2), as configs/model/internvl3-8b.yaml."""
    ratio = base_config.downsample_ratio
    merge = round(1 / ratio)
    if abs(merge * ratio - 1) > 1e-6:
        raise ValueError(f"InternVL downsample_ratio {ratio}: only 1/n ratios (0.5, 0.25, ...) are supported")
    return {"pixel_shuffle": merge, "projector_layer_norm": True, "video_kernel": [2, 2, 2], "image_kernel": [1, 2, 2]}


@dataclass(frozen=True)
class BaseArchitecture:
    model_type: str
    model_class: type
    dropped: tuple[str, ...] = ()       # base parameters PPLLaVA does not use
    config_fields: Callable[[object], dict] = _no_fields    # PPLLaVAConfig fields the base's config decides


BASES = {b.model_type: b for b in (
    BaseArchitecture("llava_next", LlavaNextForConditionalGeneration, ("image_newline",)),
    BaseArchitecture("llava_onevision", LlavaOnevisionForConditionalGeneration, ("image_newline",)),
    BaseArchitecture("internvl", InternVLForConditionalGeneration, config_fields=_internvl_fields),
)}


def read_config(directory: str | Path, role: str) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{role} {directory}: no config.json (expected a local Hugging Face model folder)")
    return json.loads(path.read_text(encoding="utf-8"))


def base_architecture(config: dict) -> BaseArchitecture:
    model_type = config.get("model_type")
    if model_type not in BASES:
        raise ValueError(f"unknown base architecture {model_type!r}; supported: {', '.join(BASES)}")
    return BASES[model_type]


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def build_config(base, dual, keep: int, stretch: int) -> PPLLaVAConfig:
    """The PPLLaVA config of a loaded base model and dual encoder, or a ValueError naming the mismatch."""
    family = family_of_dual(dual.config.model_type)
    vision_family = family_of_vision(base.config.vision_config.model_type)
    if vision_family is not family:
        raise ValueError(f"the base's vision tower is {base.config.vision_config.model_type!r} but the text tower "
                         f"comes from a {dual.config.model_type!r} model: they must be one pair")
    base_hidden, dual_hidden = base.config.vision_config.hidden_size, dual.config.vision_config.hidden_size
    if base_hidden != dual_hidden:
        raise ValueError(f"vision hidden size mismatch: the base's vision tower has {base_hidden}, the text tower's "
                         f"paired vision model {dual_hidden}; this is not the base's paired text tower")
    layer = base.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"the base uses vision features from several layers {layer}; PPLLaVA pools one layer")
    aligned = getattr(dual.config, "vision_feature_layer", layer), getattr(dual.config, "vision_feature_select_strategy",
                                                                         base.config.vision_feature_select_strategy)
    if aligned != (layer, base.config.vision_feature_select_strategy):
        raise ValueError(f"the text tower was aligned on vision features {aligned} (layer, select strategy) but the "
                         f"base uses {(layer, base.config.vision_feature_select_strategy)}: align on the base's features")
    prompt = dual.config.text_config.to_dict()
    prompt["max_position_embeddings"] = extended_length(prompt["max_position_embeddings"], keep, stretch)
    return PPLLaVAConfig(
        vision_config=base.config.vision_config.to_dict(),
        prompt_config=prompt,
        text_config=base.config.text_config.to_dict(),
        vision_feature_layer=layer,
        vision_feature_select_strategy=base.config.vision_feature_select_strategy,
        projector_hidden_act=base.config.projector_hidden_act,
        multimodal_projector_bias=getattr(base.config, "multimodal_projector_bias", True),
        image_token_id=base.config.image_token_id,
        video_token_id=getattr(base.config, "video_token_id", None),
        prompt_context_extension=[keep, stretch],
        relevance_scale=float(dual.logit_scale.detach().float().exp()),
        **BASES[base.config.model_type].config_fields(base.config),
    )


def build_state(base, dual, config: PPLLaVAConfig, keep: int, stretch: int) -> dict[str, torch.Tensor]:
    family = config.tower_family()
    state = {}
    state.update(_prefixed("vision_tower.", base.model.vision_tower.state_dict()))
    state.update(_prefixed("multi_modal_projector.", base.model.multi_modal_projector.state_dict()))
    state.update(_prefixed("language_model.model.", base.model.language_model.state_dict()))
    state["language_model.lm_head.weight"] = base.lm_head.weight.detach()
    text = family.text_state_from_dual(dual)
    position_key = family.position_embedding_path + ".weight"
    text[position_key] = extend_positions(text[position_key], keep, stretch)
    state.update(_prefixed("prompt_pooling.prompt_tower.", text))
    projection = family.build_patch_projection(config)
    projection.load_from_dual(dual)
    state.update(_prefixed("prompt_pooling.patch_projection.", projection.state_dict()))
    return {k: v.detach() for k, v in state.items()}


def _copy_tokenizers(base_dir, text_tower_dir, out: Path, prompt_length: int) -> None:
    for source, target, kwargs in ((base_dir, out, {}),
                                   (text_tower_dir, out / PROMPT_TOKENIZER_DIR, {"model_max_length": prompt_length})):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as e:
            log.warning("no tokenizer copied from %s (%s): add one to %s before inference", source, e, target)
            continue
        tokenizer.save_pretrained(target)


def convert(base_dir, text_tower_dir, out_dir, keep: int = KEEP, stretch: int = STRETCH,
            dtype: torch.dtype | None = None) -> PPLLaVAConfig:
    """Write a PPLLaVA checkpoint (config, safetensors, tokenizers) to out_dir; returns its config."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not an empty folder; choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    architecture = base_architecture(read_config(base_dir, "base"))
    family = family_of_dual(read_config(text_tower_dir, "text tower").get("model_type"))
    base = architecture.model_class.from_pretrained(base_dir, dtype=dtype or "auto")
    dual = family.dual_class.from_pretrained(text_tower_dir, dtype=base.dtype)
    config = build_config(base, dual, keep, stretch)
    config.dtype = base.dtype
    state = build_state(base, dual, config, keep, stretch)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.partial-") as tmp:
        save_weights(config, state, tmp, base.dtype, "converted weights")
        _copy_tokenizers(base_dir, text_tower_dir, Path(tmp), config.prompt_config.max_position_embeddings)
        if (Path(base_dir) / "generation_config.json").is_file():   # the base's stop tokens and defaults
            shutil.copy2(Path(base_dir) / "generation_config.json", Path(tmp) / "generation_config.json")
        if out.exists():
            out.rmdir()                                  # empty (checked above)
        os.replace(tmp, out)                             # the folder appears complete or not at all
    if architecture.dropped:
        log.info("dropped base parameters PPLLaVA does not use: %s", ", ".join(architecture.dropped))
    return config
